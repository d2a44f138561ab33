"""The scheduler's bookkeeping and the SQL of its jobs.

`scheduler_runs(job, last_run_at)` remembers when each periodic job last ran, so a restarted
node catches up a missed run once, and several nodes sharing the database run each job once:
`run_job` takes a transaction-level advisory lock for the job, re-reads its last run under
that lock, and runs the job's SQL and records the run in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Collection, Iterable

import attrs
import psycopg

from store import gateways as gateways_store
from store import messages as messages_store

__all__ = ["JobRun", "load_runs", "run_job", "mark_stale_gateways_offline", "queue_tick", "TickResult"]


@attrs.frozen
class JobRun:
    """How one attempt at a job went: `ran`, `not_due` (another node ran it already) or `busy`
    (another node holds the job's lock right now)."""

    state: str
    last_run_at: datetime | None
    result: object = None


def load_runs(conn: psycopg.Connection, jobs: Iterable[str], now: datetime) -> dict[str, datetime]:
    """Every job's last run; a job never seen before is recorded as run at `now` (a fresh
    database does not reset today's counters the moment a node first starts)."""
    names = list(jobs)
    conn.execute(
        "INSERT INTO scheduler_runs (job, last_run_at) SELECT unnest(%b::text[]), %s"
        " ON CONFLICT (job) DO NOTHING",
        (names, now),
    )
    rows = conn.execute("SELECT job, last_run_at FROM scheduler_runs WHERE job = ANY(%s)", (names,)).fetchall()
    return {row["job"]: row["last_run_at"] for row in rows}


def run_job(conn: psycopg.Connection, job: str, lock_id: int, now: datetime,
            is_due: Callable[[datetime | None], bool], body: Callable[..., object], *args: object) -> JobRun:
    """Run `body(conn, *args)` once for this due slot of `job`, across every node.

    Skips (`busy`) when another transaction holds the job's advisory lock, and (`not_due`)
    when the recorded last run, read under the lock, says the slot was already served.
    Otherwise runs the body and records `now`, all in the caller's one transaction.
    """
    locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (lock_id,)).fetchone()["ok"]
    if not locked:
        return JobRun("busy", None)
    row = conn.execute("SELECT last_run_at FROM scheduler_runs WHERE job = %s", (job,)).fetchone()
    last = row["last_run_at"] if row is not None else None
    if not is_due(last):
        return JobRun("not_due", last)
    result = body(conn, *args)
    conn.execute(
        "INSERT INTO scheduler_runs (job, last_run_at) VALUES (%s, %s)"
        " ON CONFLICT (job) DO UPDATE SET last_run_at = EXCLUDED.last_run_at",
        (job, now),
    )
    return JobRun("ran", now, result)


def mark_stale_gateways_offline(conn: psycopg.Connection, live_ids: Collection[int],
                                stale_seconds: float) -> list[dict]:
    """CheckGatewayHealthJob: gateways still marked online with no heartbeat for `stale_seconds`
    and no socket on the calling node (`live_ids`) go offline, their unsent messages go back
    to the queue, and `gateway_offline` is emitted; return those gateways (id, device_id, name)."""
    stale = conn.execute(
        "SELECT id, device_id, name FROM gateways WHERE status = 'online'"
        " AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => %s))"
        " AND NOT (id = ANY(%s)) ORDER BY id FOR UPDATE SKIP LOCKED",
        (stale_seconds, list(live_ids)),
    ).fetchall()
    offline = []
    for gateway in stale:
        if gateways_store.mark_offline(conn, gateway):
            offline.append(gateway)
    return offline


@attrs.frozen
class TickResult:
    released: int     # scheduled messages whose send_at came, now queued
    expired: int      # queued messages past their TTL, now failed
    queue_depth: int  # queued messages after both


def queue_tick(conn: psycopg.Connection) -> TickResult:
    """Release due scheduled messages, expire stale queued ones, count the queue.

    Safe on every node at once: each UPDATE locks the rows it changes, so a message is released
    or expired by one transaction only. The count runs on the queue's partial index."""
    released = messages_store.release_scheduled(conn)
    expired = messages_store.expire_queued(conn)
    depth = conn.execute("SELECT count(*) AS n FROM messages WHERE status = 'queued'").fetchone()["n"]
    return TickResult(released=released, expired=expired, queue_depth=depth)
