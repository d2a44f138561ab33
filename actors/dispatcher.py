"""The dispatcher: picks a gateway for each queued message and hands it over.

It sleeps until woken (a message was queued, a phone connected or reported, an operator
changed a gateway) or until its slow safety sweep, then claims a batch from PostgreSQL with
`FOR UPDATE SKIP LOCKED`, sized to what this node's phones can take now, plans it with the
pure choice policy, and gives each message to its gateway actor. A message it cannot hand
over goes straight back to the queue.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
import time
from typing import Callable

import attrs
import trio

from actors.group_commit import GroupCommitter

from actors.backoff import SMS_RETRY_SCHEDULE, scheduled_delay
from actors.choice import plan_ranked
from actors.gateway import GatewayActor
from actors.registry import GatewayRegistry
from actors.metrics import NodeMetrics
from store import messages as messages_store
from store import reports as reports_store
from store.pool import Store, StoreUnavailable

__all__ = ["Dispatcher", "Handoff"]

log = logging.getLogger("smsgw.dispatcher")

SWEEP_INTERVAL = 2.0   # retries whose backoff ended, and anything a lost wake-up missed
MAX_BATCH = 500
PACE_FLOOR = 0.005     # a round's bookkeeping below this is not paced


@attrs.define(eq=False)
class Handoff:
    """Accepted messages planned onto this node's phones before the transaction that accepts
    them: it writes them already dispatched, and they are handed over once it has committed
    (`Dispatcher.plan_handoff`, `Dispatcher.finish_handoff`). Keys are the caller's own."""

    began: float = 0.0
    chosen: dict[object, tuple[int, str]] = attrs.Factory(dict)  # key -> (gateway_id, lease)
    reserved: list[tuple[GatewayActor, int, int]] = attrs.Factory(list)  # (actor, messages, segments)
    # Filled in by the write: the rows it wrote dispatched, and whether it left any due
    # message queued (then a round must follow).
    rows: list[dict] = attrs.Factory(list)
    queued: bool = False


@attrs.define(eq=False)
class Dispatcher:
    store: Store
    registry: GatewayRegistry
    max_attempts: int = 3
    retry_delays: tuple[float, ...] = SMS_RETRY_SCHEDULE
    rand: Callable[[], float] = random.random
    on_dispatched: Callable[[list[dict]], None] = lambda rows: None
    broadcast: Callable[[], None] = lambda: None  # the backplane's publish_wake: tell the other nodes
    metrics: NodeMetrics = attrs.Factory(NodeMetrics)  # the node's, set by build_node
    _wakeup: trio.Event = attrs.Factory(trio.Event)
    # Reports from every phone are written in groups, one transaction each (see run_reports).
    reports: GroupCommitter = attrs.field(default=None)
    dispatched_total: int = 0
    # Whether queued messages may be waiting. Capacity changes (a phone connected or reported)
    # start a round only then, so a storm of connections costs nothing while the queue is empty.
    _backlog: bool = True
    _arrivals: int = 0
    # CPU the last round spent planning in the event loop; past PACE_FLOOR the next round
    # waits as long (see `run`).
    bookkeeping: float = 0.0
    # The last round left due messages it could not place (or ran out of room with more
    # waiting): the phones are short, so accepted messages queue and are served in priority
    # order instead of being handed straight over (see `plan_handoff`).
    _short: bool = True  # until a round has looked
    # Handed-off messages whose phone went away before the write committed: the run loop
    # returns them to the queue.
    _lost: dict[int, list[str]] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if self.reports is None:
            self.reports = GroupCommitter(
                store=self.store, name="reports",
                write_batch=functools.partial(reports_store.apply_reports, max_attempts=self.max_attempts,
                                              retry_delay=self._retry_delay))

    @property
    def handing_off(self) -> bool:
        """Whether accepted messages go straight to phones here now (`plan_handoff`)."""
        return not self._short

    def wake(self) -> None:
        """Ask for a dispatch round soon, here and on every node (the queue changed); never
        blocks, safe from any task."""
        self.wake_local()
        self.broadcast()

    def wake_local(self) -> None:
        """Ask this node's dispatcher alone: messages were queued (here or, through the
        backplane, on another node)."""
        self._arrivals += 1
        self._backlog = True
        self._wakeup.set()

    def capacity_changed(self) -> None:
        """A phone here connected, reported or was changed: a round if messages wait."""
        if self._backlog:
            self._wakeup.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch rounds until cancelled. A crash propagates to the supervisor."""
        task_status.started()
        while True:
            # The sweep always runs a round: retries whose backoff ended are due by time alone.
            with trio.move_on_after(SWEEP_INTERVAL):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._lost:
                lost, self._lost = self._lost, {}
                await self._take_back(lost)
            await self.dispatch_round()
            if self.bookkeeping > PACE_FLOOR:
                # A round's plan reads about as many phones as it places messages (the
                # registry keeps them ranked), well under a millisecond; should one still take
                # long, waiting as long before the next keeps rounds to half the event loop at
                # most under a steady stream of wake-ups. The messages wait for the next batch.
                await trio.sleep(self.bookkeeping)

    async def dispatch_round(self) -> int:
        """Claim and hand over as much as the phones can take now; return how many."""
        total = 0
        arrivals = self._arrivals
        self.bookkeeping = 0.0
        if not self._backlog and not await self.store.run(messages_store.any_due):
            # The sweep, with nothing known to wait: one cheap question, not a view of every
            # phone on the node (thousands of idle sockets would pay for it every 2 s).
            return total
        while True:
            now = trio.current_time()
            capacity = self.registry.free
            if capacity == 0:
                self._short = self._backlog
                return total
            limit = min(capacity, MAX_BATCH)
            leases: dict[int, str] = {}
            planning: list[float] = []
            snapshot, horizon = self.registry.ranking(now)
            tired: list = []

            def plan(due: list[dict]) -> list[tuple[str, int]]:
                # On the claim's worker thread, while it holds the rows: the ranking as it was
                # a moment ago, each phone as it is now, read only as far as the batch needs.
                # (A claim retried after a deadlock reads on from where the first try stopped:
                # fewer phones, so some messages may wait for the next round; none is lost.)
                began = time.perf_counter()
                batch = [(row["message_id"], row["segments"],
                          frozenset({row["avoid_gateway_id"]}) if row["avoid_gateway_id"] else frozenset())
                         for row in due]
                chosen = []
                for a in plan_ranked(batch, self.registry.read_ranking(snapshot, horizon, now, tired)):
                    actor = self.registry.get(a.gateway_id)
                    if actor is not None:  # gone meanwhile: the message stays queued
                        leases[a.gateway_id] = actor.lease
                        chosen.append((a.message_id, a.gateway_id))
                planning.append(time.perf_counter() - began)
                return chosen

            rows, left = await self.store.run(messages_store.claim_for_dispatch, limit, plan, leases)
            self.registry.rest(tired, now)
            self.bookkeeping += sum(planning)
            if not rows:
                self._backlog = left > 0 or self._arrivals != arrivals
                self._short = left > 0
                return total
            await self._hand_over(rows)
            self.metrics.dispatched(len(rows), trio.current_time() - now)  # claim began at `now`
            total += len(rows)
            self.dispatched_total += len(rows)
            if len(rows) < limit:
                self._backlog = left > 0 or self._arrivals != arrivals
                self._short = left > 0
                return total

    async def _hand_over(self, rows: list[dict]) -> None:
        lost = self._give(rows)
        if lost:
            await self._take_back(lost)

    def _give(self, rows: list[dict]) -> dict[int, list[str]]:
        """Hand each dispatched row to its phone; return, by gateway, what could not be."""
        lost: dict[int, list[str]] = {}
        for row in rows:
            actor = self.registry.get(row["gateway_id"])
            if (actor is None or actor.close_reason is not None or actor.lease != row["lease"]
                    or not actor.hand(row)):
                lost.setdefault(row["gateway_id"], []).append(row["message_id"])
        self.on_dispatched(rows)
        return lost

    async def _take_back(self, lost: dict[int, list[str]]) -> None:
        for gateway_id, message_ids in lost.items():
            with trio.CancelScope(shield=True):
                await self.store.run(messages_store.requeue_dispatched, gateway_id, message_ids)
        self.wake()

    def plan_handoff(self, messages: list[tuple[object, int, int]]) -> Handoff:
        """Place messages about to be accepted on this node's phones, `(key, segments,
        priority)` each, and hold room for them; never blocks.

        A message accepted while phones here have room need not wait for a round: the
        accepting transaction writes it dispatched (with the phone's lease) and it is handed
        over as soon as that has committed, one transaction and no claim between its 202 and
        its phone. The plan is the round's policy (`plan_ranked`).

        What waits in the queue meanwhile (from another node, a retry, a claim under way) is
        not delayed by more than the round already coming for it, as long as the phones have
        room for both. Once a round finds the phones short (due messages it could not place),
        nothing is handed over until a round has placed all it found: accepted messages queue
        and are served in priority order, so under load no newcomer takes the room an older or
        more urgent message waits for. A round and a hand-off planned at once may promise a
        phone the same room; its send budget is never overspent (`GatewayActor.hand` refuses,
        the message is queued again), its window may be, by a batch at most.
        """
        handoff = Handoff(began=trio.current_time())
        capacity = self.registry.free
        if self._short or not capacity or not messages:
            return handoff
        now = handoff.began
        batch = sorted(messages, key=lambda m: m[2])[:min(capacity, MAX_BATCH)]  # high priority first
        snapshot, horizon = self.registry.ranking(now)
        tired: list = []
        held: dict[int, list] = {}  # gateway_id -> [actor, messages, segments]
        places = [(position, segments, frozenset()) for position, (_, segments, _) in enumerate(batch)]
        for a in plan_ranked(places, self.registry.read_ranking(snapshot, horizon, now, tired)):
            key, segments, _ = batch[a.message_id]
            entry = held.setdefault(a.gateway_id, [self.registry.get(a.gateway_id), 0, 0])
            entry[1] += 1
            entry[2] += segments
            handoff.chosen[key] = (a.gateway_id, entry[0].lease)
        self.registry.rest(tired, now)
        for actor, count, segments in held.values():
            actor.reserve(count, segments)
            handoff.reserved.append((actor, count, segments))
        return handoff

    def finish_handoff(self, handoff: Handoff, committed: bool) -> None:
        """The accepting transaction ended: release what `plan_handoff` held and, if it
        committed, hand its dispatched rows over (a phone gone meanwhile: the run loop
        requeues them) and start a round for what it queued."""
        for actor, count, segments in handoff.reserved:
            actor.release(count, segments)
        if not committed:
            return
        if handoff.rows:
            lost = self._give(handoff.rows)
            for gateway_id, message_ids in lost.items():
                self._lost.setdefault(gateway_id, []).extend(message_ids)
            if lost:
                self._wakeup.set()
            self.metrics.dispatched(len(handoff.rows), trio.current_time() - handoff.began)
            self.dispatched_total += len(handoff.rows)
        if handoff.queued:
            self.wake()

    async def report(self, gateway: dict, message_id: str, status: str, error_message: str | None,
                     *, retry_unavailable: bool = False) -> None:
        """Apply a phone's delivery report (socket or REST); raise `UnknownMessage` if it was
        never this gateway's message. Idempotent. With `retry_unavailable`, an unreachable
        database is retried with backoff until the caller's deadline (the socket path: the
        phone will not send it again); otherwise `StoreUnavailable` propagates (REST: 503)."""
        [outcome] = await self.report_many(gateway, [(message_id, status, error_message)],
                                           retry_unavailable=retry_unavailable)
        if isinstance(outcome, BaseException):
            raise outcome

    async def report_many(self, gateway: dict, reports: list[tuple[str, str, str | None]], *,
                          retry_unavailable: bool = False) -> list[reports_store.ReportOutcome | Exception]:
        """Apply several reports of one phone, in order, in one group commit; one outcome each
        (an `UnknownMessage` in the place of a report on a message never this gateway's)."""
        batch = [reports_store.Report(gateway, message_id, status, error) for message_id, status, error in reports]
        # A phone does not resend a report, so a database hiccup is waited out (within the
        # caller's deadline) instead of dropping what the phone told us.
        delay = 0.1
        while True:
            try:
                outcomes = await self.reports.submit_many(batch)
                break
            except StoreUnavailable:
                if not retry_unavailable:
                    raise
                log.warning("%d report(s) of gateway %s wait for the database", len(batch), gateway["id"])
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
        requeued = False
        settled: list[str] = []
        changed: collections.Counter[str] = collections.Counter()
        for report, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                continue
            if outcome.changed:
                changed[outcome.status] += 1
            settled.append(report.message_id)
            requeued |= outcome.requeued
        for status, n in changed.items():  # counted per batch: a label lookup per report added up
            self.metrics.reported(status, n=n)
        if settled:
            self.registry.settled(gateway["id"], *settled)
        if requeued:
            self.wake()
        return outcomes

    def _retry_delay(self, attempt: int) -> float | None:
        return scheduled_delay(self.retry_delays, attempt, rand=self.rand)

    async def release(self, gateway_id: int, lease: str) -> int:
        """A connection ended: return what it still held to the queue, then wake up.

        Shielded: this write must happen even when the caller is being cancelled."""
        with trio.CancelScope(shield=True):
            n = await self.store.run(messages_store.requeue_lease, gateway_id, lease)
        if n:
            self.wake()
        return n
