"""PostgreSQL LISTEN/NOTIFY on a dedicated connection, driven from Trio.

A commit that NOTIFYs wakes every node that listens, at commit time and only then, which is
what the webhook outbox and the key cache need: no polling, and nothing seen before it is
durable. The socket is waited on inside Trio (no thread), so cancellation is immediate.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Iterable

import psycopg
import trio

__all__ = ["listen_forever", "LISTEN_CHECK", "LISTEN_RETRY"]

log = logging.getLogger("smsgw.notifications")

LISTEN_CHECK = 30.0  # how long to wait on a silent socket before checking the connection
LISTEN_RETRY = 5.0   # delay before reconnecting a listener whose connection broke


async def listen_forever(conninfo: str, channels: Iterable[str], *, name: str,
                         on_notify: Callable[[str, str], None], on_connect: Callable[[], None],
                         on_disconnect: Callable[[], None] = lambda: None) -> None:
    """Call `on_notify(channel, payload)` for each notification until cancelled.

    `on_connect()` runs after every (re)connection: whatever was notified while nobody
    listened is unknown, so the caller catches up there; `on_disconnect()` runs when the
    connection is lost or the listener stops. A broken connection is logged and retried every
    `LISTEN_RETRY` seconds.
    """
    channels = tuple(channels)
    while True:
        try:
            await _listen_once(conninfo, channels, name, on_notify, on_connect)
        except psycopg.OperationalError as exc:
            log.warning("%s listener lost its connection (%s); reconnecting", name, exc)
        finally:
            on_disconnect()
        await trio.sleep(LISTEN_RETRY)


async def _listen_once(conninfo: str, channels: tuple[str, ...], name: str,
                       on_notify: Callable[[str, str], None], on_connect: Callable[[], None]) -> None:
    connect = functools.partial(psycopg.connect, conninfo, autocommit=True, connect_timeout=5,
                                application_name=f"smsgw-{name}", keepalives=1, keepalives_idle=30,
                                keepalives_interval=10, keepalives_count=3)
    conn = await trio.to_thread.run_sync(connect)
    try:
        for channel in channels:
            await trio.to_thread.run_sync(conn.execute, f"LISTEN {channel}")
        on_connect()
        pgconn = conn.pgconn
        while True:
            # Nothing else runs on this connection, so libpq never buffers a notification we
            # have not seen: the socket turning readable is the whole signal.
            with trio.move_on_after(LISTEN_CHECK):
                await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()  # non-blocking; raises OperationalError on a dead connection
            while (note := pgconn.notifies()) is not None:
                on_notify(note.relname.decode(), note.extra.decode())
    finally:
        conn.close()
