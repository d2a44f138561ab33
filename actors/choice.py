"""Which phone sends a message: the dispatcher's gateway-choice policy.

Kept apart from the dispatcher so the policy can be read and tested
without actors, sockets or a database: the dispatcher takes a snapshot of
its gateways, asks this module, and acts on the answer.  Operators rank
gateways by priority (a cheaper SIM first); among equals the least loaded
phone wins, so one batch spreads over the pool instead of queueing behind
a single phone.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["Assignment", "GatewayView", "choose_gateway", "plan_batch", "plan_ranked"]


@attrs.frozen
class GatewayView:
    """What the dispatcher knows about one gateway at the moment of choice."""

    gateway_id: int
    priority: int  # lower number is preferred
    active: bool  # enabled by its owner
    online: bool  # connected right now
    subscribed: bool  # listening on its message channel
    in_flight: int  # sent to the phone, no result yet
    queue_depth: int  # assigned, not yet sent to the phone
    budget: float  # segments it may send now; math.inf when unlimited

    @property
    def load(self) -> int:
        """Messages the gateway already has on its plate."""
        return self.in_flight + self.queue_depth


@attrs.frozen
class Assignment:
    """One message given to one gateway."""

    message_id: str
    gateway_id: int


def choose_gateway(
    candidates: Sequence[GatewayView],
    segments: int,
    *,
    avoid: frozenset[int] = frozenset(),
) -> int | None:
    """The id of the gateway that should send a message, or None.

    Eligible: active, online, subscribed and with a budget of at least
    ``segments``.  Preferred: lowest priority number, then least load, then
    lowest id (so equal inputs give equal answers).  ``avoid`` is soft: a
    gateway in it (say, one that just failed this message) is chosen only
    when no other is eligible.
    """
    index = _best_index(candidates, segments, avoid)
    return None if index is None else candidates[index].gateway_id


def plan_batch(
    messages: Sequence[tuple[str, int, frozenset[int]]],
    candidates: Sequence[GatewayView],
) -> list[Assignment]:
    """Assign ``(message_id, segments, avoid)`` messages in order.

    Each assignment adds one to the chosen gateway's queue and takes its
    segments from its budget before the next message is placed, so equal
    gateways take turns and no budget is overrun.  Messages that no
    gateway can take are left out of the result.  Each choice is the one
    ``choose_gateway`` would make; a heap keeps it O(log n) per message, so
    a large backlog over many phones is planned in milliseconds.
    """
    return plan_ranked(messages, sorted(candidates, key=_rank))


def plan_ranked(
    messages: Sequence[tuple[str, int, frozenset[int]]],
    ranked: Iterable[GatewayView],
) -> list[Assignment]:
    """``plan_batch`` over candidates given best first (by priority, load,
    id), read only as far as the choices need: a batch of k messages over
    thousands of idle phones looks at about k of them, not at all.
    """
    ranked = iter(ranked)
    budgets: dict[int, float] = {}
    heap: list[tuple[int, int, int]] = []
    upcoming: list[tuple[int, int, int]] = []  # the next ranked candidate, not yet in the heap

    def pop_best() -> tuple[int, int, int] | None:
        # Every candidate still unread ranks after `upcoming`; read on while it beats the
        # heap's best, so the heap's best is the best of all.
        while True:
            if not upcoming:
                for view in ranked:
                    if view.active and view.online and view.subscribed and view.budget >= 1:
                        budgets[view.gateway_id] = view.budget
                        upcoming.append(_rank(view))
                        break
                else:
                    break
            if heap and heap[0] <= upcoming[0]:
                break
            heapq.heappush(heap, upcoming.pop())
        return heapq.heappop(heap) if heap else None

    assignments = []
    for message_id, segments, avoid in messages:
        chosen, fallback, skipped = None, None, []
        while (entry := pop_best()) is not None:
            if budgets[entry[2]] < segments:
                skipped.append(entry)
            elif entry[2] in avoid:
                if fallback is None:
                    fallback = entry  # the best of the avoided, used only if nothing else can
                else:
                    skipped.append(entry)
            else:
                chosen = entry
                break
        if chosen is None:
            chosen, fallback = fallback, None
        for entry in skipped + ([fallback] if fallback is not None else []):
            heapq.heappush(heap, entry)
        if chosen is None:
            continue
        priority, load, gateway_id = chosen
        budgets[gateway_id] -= segments
        if budgets[gateway_id] >= 1:
            heapq.heappush(heap, (priority, load + 1, gateway_id))
        assignments.append(Assignment(message_id, gateway_id))
    return assignments


def _best_index(
    views: Sequence[GatewayView], segments: int, avoid: frozenset[int]
) -> int | None:
    """Position in ``views`` of the preferred eligible gateway, if any."""
    eligible = [i for i, view in enumerate(views) if _can_send(view, segments)]
    preferred = [i for i in eligible if views[i].gateway_id not in avoid]
    pool = preferred or eligible
    if not pool:
        return None
    return min(pool, key=lambda i: _rank(views[i]))


def _can_send(view: GatewayView, segments: int) -> bool:
    return (
        view.active and view.online and view.subscribed and view.budget >= segments
    )


def _rank(view: GatewayView) -> tuple[int, int, int]:
    return (view.priority, view.load, view.gateway_id)
