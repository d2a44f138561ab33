"""Group commit: many waiting callers, one transaction.

A `GroupCommitter` takes whatever requests have arrived in its mailbox, writes them all in one
transaction with its `write_batch` function, and answers each waiter once that transaction has
committed. There is no fixed wait for a batch to fill: with light traffic a batch is one
request, and under load batches grow by themselves, so the commit cost is shared.

`write_batch(conn, items)` returns one result per item, in order; an item's result may be an
exception instance, which is raised to that waiter alone (the others still commit). If the
transaction itself fails, every waiter of the batch gets that error and nothing of the batch
was committed.

With `prepare`, each batch is first shown to it in the event loop; what it returns is passed
on, as `write_batch(conn, items, prepared)` and then to `finish(prepared, committed)`, called
in the event loop once the transaction has ended and before any waiter is answered. (The
sends committer uses them to hand accepted messages straight to phones: actors/dispatcher.py.)
"""

from __future__ import annotations

import logging
from typing import Callable, Generic, Sequence, TypeVar

import attrs
import trio

from store.pool import Store

__all__ = ["GroupCommitter"]

log = logging.getLogger("smsgw.group_commit")
T = TypeVar("T")
R = TypeVar("R")


@attrs.define(eq=False)
class _Pending(Generic[T]):
    items: list[T]
    deadline: float
    done: trio.Event = attrs.Factory(trio.Event)
    results: list[object] = attrs.Factory(list)
    error: BaseException | None = None


@attrs.define(eq=False)
class GroupCommitter(Generic[T, R]):
    store: Store
    write_batch: Callable[..., Sequence[object]]
    name: str = "group-commit"
    max_batch: int = 500
    writers: int = 2  # transactions in flight at once: one fills while the other commits
    mailbox_size: int = 4096
    watch_interval: float = 0.5  # how often waiters past their deadline are let go
    prepare: Callable[[list], object] | None = None
    finish: Callable[[object, bool], None] = lambda prepared, committed: None
    batches: int = 0
    items: int = 0
    _send: trio.MemorySendChannel = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel = attrs.field(init=False)
    _waiting: set[_Pending] = attrs.Factory(set)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel(self.mailbox_size)

    async def submit(self, item: T, *, timeout: float = 15.0) -> R:
        """Write `item` in the next group; return its result once committed.

        Raises the item's own error, the batch's error (e.g. `StoreUnavailable`), or
        `trio.TooSlowError` after about `timeout`. If the caller is cancelled after submitting, the
        item may still be committed (as with any write whose answer was lost).
        """
        [result] = await self.submit_many([item], timeout=timeout)
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]

    async def submit_many(self, items: Sequence[T], *, timeout: float = 15.0) -> list[R | BaseException]:
        """Write `items` together, in order, in the next group; return one result each (an
        item's own error in its place). The batch's error (e.g. `StoreUnavailable`) or
        `trio.TooSlowError` is raised: then none of them, or all of them, was committed.

        One waiter for many items: a phone that reported twenty messages at once waits once.
        """
        if not items:
            return []
        pending = _Pending(list(items), deadline=trio.current_time() + timeout)
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            with trio.move_on_at(pending.deadline) as waited:  # a full mailbox: back-pressure
                await self._send.send(pending)
            if waited.cancelled_caught:
                raise trio.TooSlowError from None
        # No cancel scope per waiter (they add up at thousands of sends a second): `_watch`
        # lets go of those past their deadline.
        self._waiting.add(pending)
        try:
            await pending.done.wait()
        finally:
            self._waiting.discard(pending)
        if pending.error is not None:
            raise pending.error
        return pending.results  # type: ignore[return-value]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer tasks until cancelled; a crash propagates to the supervisor."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.writers):
                nursery.start_soon(self._writer)
            nursery.start_soon(self._watch)
            task_status.started()

    async def _watch(self) -> None:
        """Every `watch_interval`, a waiter past its deadline gets `trio.TooSlowError` (its
        items may still be committed later, as with any write whose answer was lost)."""
        while True:
            await trio.sleep(self.watch_interval)
            now = trio.current_time()
            for pending in [p for p in self._waiting if p.deadline <= now and not p.done.is_set()]:
                pending.error = trio.TooSlowError()
                pending.done.set()

    async def _writer(self) -> None:
        while True:
            batch = [await self._receive.receive()]
            size = len(batch[0].items)
            while size < self.max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
                size += len(batch[-1].items)
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        items = [item for pending in batch for item in pending.items]
        prepared = None
        try:
            # Shielded: once a batch is being written, its waiters must learn the outcome.
            with trio.CancelScope(shield=True):
                if self.prepare is None:
                    results = await self.store.run(self.write_batch, items)
                else:
                    prepared = self.prepare(items)
                    results = await self.store.run(self.write_batch, items, prepared)
        except Exception as exc:  # the whole transaction failed: nothing of it was committed
            log.warning("%s: batch of %d failed: %s", self.name, len(items), exc)
            if prepared is not None:
                self.finish(prepared, False)
            for pending in batch:
                pending.error = exc
                pending.done.set()
            return
        if self.prepare is not None:
            self.finish(prepared, True)
        if len(results) != len(items):
            raise AssertionError(f"{self.name}: {len(results)} results for {len(items)} items")
        self.batches += 1
        self.items += len(items)
        at = 0
        for pending in batch:
            pending.results = list(results[at:at + len(pending.items)])
            at += len(pending.items)
            pending.done.set()
