"""The PostgreSQL pool, driven from Trio.

psycopg's async classes need asyncio, so every call runs a plain function on a worker thread
(`trio.to_thread.run_sync`) with a connection from `psycopg_pool.ConnectionPool`. Each call is
one transaction: a store function is a state transition, and it commits or rolls back whole.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, ParamSpec, TypeVar

import attrs
import psycopg
import trio
from psycopg.errors import DeadlockDetected, SerializationFailure
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

__all__ = ["Store", "StoreUnavailable", "open_store"]

log = logging.getLogger("smsgw.store")
TRANSIENT_RETRIES = 5  # deadlocks and serialization failures: PostgreSQL rolled back, try again
P = ParamSpec("P")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database could not be reached in time; the caller answers 503."""


@attrs.define
class Store:
    pool: ConnectionPool
    limiter: trio.CapacityLimiter

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run `fn(conn, *args, **kwargs)` in one transaction on a worker thread.

        On cancellation the thread is not abandoned: the call waits for the transaction to end
        (bounded by the pool timeout and `statement_timeout`), so a cancelled caller never
        leaves a half-known write behind.
        """
        return await trio.to_thread.run_sync(self._run_sync, fn, args, kwargs, limiter=self.limiter)

    def _run_sync(self, fn: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]) -> T:
        for attempt in range(1, TRANSIENT_RETRIES + 1):
            try:
                with self.pool.connection() as conn:
                    with conn.transaction():
                        return fn(conn, *args, **kwargs)
            except (DeadlockDetected, SerializationFailure) as exc:
                # The transaction was rolled back whole: running it again is safe.
                if attempt == TRANSIENT_RETRIES:
                    raise StoreUnavailable(f"gave up after {attempt} tries: {exc}") from exc
                log.info("transaction retried after %s", type(exc).__name__)
                time.sleep(0.005 * attempt)
            except (PoolTimeout, psycopg.OperationalError) as exc:
                raise StoreUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with trio.fail_after(2):
                return await self.run(lambda conn: conn.execute("SELECT 1").fetchone() is not None)
        except (StoreUnavailable, trio.TooSlowError):
            return False


def _configure(statement_timeout_ms: int, day_zone: str) -> Callable[[psycopg.Connection], None]:
    def configure(conn: psycopg.Connection) -> None:
        conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
        conn.execute("SET TIME ZONE 'UTC'")
        # The zone whose midnight starts a new day for "today" counters (TZ_DAILY_RESET).
        conn.execute("SELECT set_config('smsgw.day_zone', %s, false)", (day_zone,))
        conn.commit()

    return configure


@asynccontextmanager
async def open_store(dsn: str, *, size: int = 10, statement_timeout_ms: int = 5_000,
                     day_zone: str = "UTC") -> AsyncIterator[Store]:
    """Open the pool (waiting until it has a connection) and close it on exit."""
    pool = ConnectionPool(
        dsn,
        min_size=min(2, size),
        max_size=size,
        kwargs={"row_factory": dict_row, "autocommit": False},
        configure=_configure(statement_timeout_ms, day_zone),
        timeout=5.0,
        open=False,
        name="smsgw",
    )
    await trio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=15.0))
    try:
        yield Store(pool=pool, limiter=trio.CapacityLimiter(size + 4))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)
