"""The phones' socket heartbeats, stored together.

A phone on a socket sends a heartbeat (battery, signal, its queue length) every 30 s or so.
With 10,000 phones that is 333 a second, and a transaction each kept a database connection
and a worker thread busy on nothing else. The socket's receive loop records a heartbeat in
the live actor at once (the dispatcher and the admin API read health from there) and leaves it
here; the writer stores the newest heartbeat of every phone that sent one, all in one
statement, once per `interval`.

A phone that leaves is written before it is marked offline (`flush`): a heartbeat written late
would mark an offline phone online again.
"""

from __future__ import annotations

import logging

import attrs
import trio

from store import gateways as gateways_store
from store.pool import Store, StoreUnavailable

__all__ = ["HeartbeatWriter"]

log = logging.getLogger("smsgw.heartbeats")

Health = tuple[int | None, int | None, int | None]  # battery level, signal strength, messages in queue


def _newer(older: Health | None, newer: Health) -> Health:
    """What a heartbeat leaves out, the one before it may still tell."""
    if older is None:
        return newer
    return tuple(new if new is not None else old for old, new in zip(older, newer))  # type: ignore[return-value]


@attrs.define(eq=False)
class HeartbeatWriter:
    store: Store
    interval: float = 1.0
    writes: int = 0    # statements written
    written: int = 0   # heartbeats they stored
    _pending: dict[int, Health] = attrs.Factory(dict)  # gateway id -> newest health not yet written
    _writing: frozenset[int] = frozenset()             # the gateways of the write in progress
    _arrived: trio.Event = attrs.Factory(trio.Event)
    _hurry: trio.Event = attrs.Factory(trio.Event)     # a phone is leaving: write now
    _done: trio.Event = attrs.Factory(trio.Event)      # set after each write, then replaced

    def record(self, gateway_id: int, battery_level: int | None, signal_strength: int | None,
               messages_in_queue: int | None) -> None:
        """Keep a heartbeat for the next write (never blocks)."""
        health = (battery_level, signal_strength, messages_in_queue)
        self._pending[gateway_id] = _newer(self._pending.get(gateway_id), health)
        self._arrived.set()

    async def flush(self, gateway_id: int) -> None:
        """Return once no heartbeat of this gateway waits or is being written."""
        while gateway_id in self._pending or gateway_id in self._writing:
            done = self._done
            self._hurry.set()
            await done.wait()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._arrived.wait()
            with trio.move_on_after(self.interval):
                await self._hurry.wait()
            self._arrived, self._hurry = trio.Event(), trio.Event()
            batch, self._pending = self._pending, {}
            if batch:
                await self._write(batch)

    async def _write(self, batch: dict[int, Health]) -> None:
        self._writing = frozenset(batch)
        try:
            with trio.CancelScope(shield=True):  # a write begun is finished: `flush` waits on it
                await self.store.run(gateways_store.record_heartbeats, batch)
            self.writes += 1
            self.written += len(batch)
        except StoreUnavailable as exc:
            # The phones' next heartbeats carry the same news; their sockets keep them online.
            log.warning("%d heartbeat(s) not stored, database unavailable: %s", len(batch), exc)
        finally:
            self._writing = frozenset()
            self._done.set()
            self._done = trio.Event()
