"""The registry of the node's gateway actors, and the ranking the dispatcher reads.

`GatewayRegistry` holds the live `GatewayActor` of each connected phone (a newer connection
replaces an older one), runs the one keepalive ticker for all their sockets, applies operator
changes to live actors, and keeps what a dispatch round needs without looking at every phone:
the free room of the node's phones as a running sum, and the phones with room ranked by
(priority, load, id) in a heap that each actor updates as it changes.
"""

from __future__ import annotations

import heapq
import time
from typing import Callable, Iterator

import attrs
import trio

from actors.choice import GatewayView
from actors.gateway import PING_INTERVAL, GatewayActor
from actors.rates import TokenBucket
from web import cable_protocol as cable

__all__ = ["GatewayRegistry"]


@attrs.define
class GatewayRegistry:
    """The node's live gateway actors, by gateway id. Newer connections replace older ones.

    It also keeps what the dispatcher asks each round without looking at every phone: `free`,
    the messages the node's phones can still take, and the phones with room in rank order (a
    heap: `ranking`, `read_ranking`). Both are updated as a phone changes (`updated`, called by
    the actor), so a round over thousands of idle phones reads about as many phones as it
    places messages.
    """

    default_rate_per_minute: int
    _actors: dict[int, GatewayActor] = attrs.Factory(dict)
    changed: Callable[[], None] = lambda: None  # wakes the dispatcher
    free: int = 0  # the sum of `room` over the registered actors
    # (priority, load, gateway_id, stamp) of phones with room; an entry whose stamp is not its
    # actor's current one is out of date and skipped when met.
    _ranked: list[tuple[int, int, int, int]] = attrs.Factory(list)
    # (ready_at, stamp, gateway_id): phones out of send budget, back in `_ranked` at ready_at.
    _resting: list[tuple[float, int, int]] = attrs.Factory(list)
    _stamps: int = 0
    _horizon: int = 0  # the last stamp given out when the latest ranking was taken

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The keepalive of every socket on this node: one ticker, not a task per phone.

        Every 3 s each phone gets a ping (the Action Cable client reconnects after 6 s without
        a frame) and a phone silent past the heartbeat timeout is closed."""
        task_status.started()
        while True:
            await trio.sleep(PING_INTERVAL)
            now, ping = trio.current_time(), cable.ping(int(time.time()))
            for actor in list(self._actors.values()):
                actor.keepalive(now, ping)

    def attach(self, actor: GatewayActor) -> GatewayActor | None:
        """Register `actor`; return the older actor of the same gateway it replaces, if any."""
        older = self._actors.get(actor.gateway_id)
        self._actors[actor.gateway_id] = actor
        actor._registry = self
        self.updated(actor)
        if older is not None and older is not actor:
            self.updated(older)  # no longer registered: it counts for nothing
            older.close("replaced")
            return older
        return None

    def detach(self, actor: GatewayActor) -> bool:
        """Forget `actor`; True when no newer actor holds its gateway (it is now offline)."""
        if self._actors.get(actor.gateway_id) is actor:
            del self._actors[actor.gateway_id]
            self.updated(actor)
            return True
        return False

    def updated(self, actor: GatewayActor) -> None:
        """`actor`'s rank or room may have changed: count its room again and, if it has some,
        enter it in the ranking anew (its older entry goes out of date)."""
        registered = self._actors.get(actor.gateway_id) is actor
        room = 0
        if registered and actor.active and actor.close_reason is None and actor.subscribed:
            room = max(0, actor.window - actor.load)
        self.free += room - actor.room
        actor.room = room
        self._restamp(actor)
        if room:
            self._enter(actor)

    def _restamp(self, actor: GatewayActor) -> None:
        if actor.stamp <= self._horizon:  # the stamp the latest `ranking` knows, kept
            actor.prev_stamp = actor.stamp
        self._stamps += 1
        actor.stamp = self._stamps

    def _enter(self, actor: GatewayActor) -> None:
        heapq.heappush(self._ranked, (actor.priority, actor.load, actor.gateway_id, actor.stamp))
        if len(self._ranked) > 2 * len(self._actors) + 64:
            self._ranked = [e for e in self._ranked if self._current(e[2], e[3]) is not None]
            heapq.heapify(self._ranked)

    def _current(self, gateway_id: int, stamp: int) -> GatewayActor | None:
        actor = self._actors.get(gateway_id)
        return actor if actor is not None and actor.stamp == stamp else None

    def ranking(self, now: float) -> tuple[list[tuple[int, int, int, int]], int]:
        """A copy of the ranking as it is now, and the last stamp given out: what
        `read_ranking` reads (on a worker thread while a claim holds its rows). Phones whose
        rest ended are back in it."""
        resting = self._resting
        while resting and resting[0][0] <= now:
            _, stamp, gateway_id = heapq.heappop(resting)
            if (actor := self._current(gateway_id, stamp)) is not None:
                self._enter(actor)  # (may compact: `_ranked` is read only after this)
        self._horizon = self._stamps
        return list(self._ranked), self._horizon

    def read_ranking(self, snapshot: list[tuple[int, int, int, int]], horizon: int, now: float,
                     tired: list[tuple[GatewayActor, int]]) -> Iterator[GatewayView]:
        """Views of the phones in a `snapshot`, best first, as they are now; phones out of send
        budget go to `tired` (for `rest`). Safe on a worker thread: it changes nothing but the
        snapshot (a copy) and `tired`. A phone that changed since the snapshot is read as it is
        now, at its place in the snapshot."""
        seen: set[int] = set()
        while snapshot:
            _, _, gateway_id, stamp = heapq.heappop(snapshot)
            actor = self._actors.get(gateway_id)
            if actor is None or gateway_id in seen:
                continue
            current = actor.stamp
            if stamp != current and not (current > horizon and stamp == actor.prev_stamp):
                continue  # out of date before the snapshot was taken
            seen.add(gateway_id)
            view = actor.view(now)
            if not (view.active and view.online and view.subscribed):
                continue
            if view.budget < 1:
                tired.append((actor, current))
                continue
            yield view

    def rest(self, tired: list[tuple[GatewayActor, int]], now: float) -> None:
        """Phones `read_ranking` found out of send budget leave the ranking until their bucket
        holds a segment again (unless they changed meanwhile): rounds do not read them in vain."""
        for actor, stamp in tired:
            if actor.stamp == stamp and self._actors.get(actor.gateway_id) is actor:
                self._restamp(actor)
                heapq.heappush(self._resting, (now + actor.bucket.wait_time(1, now), actor.stamp, actor.gateway_id))

    def get(self, gateway_id: int) -> GatewayActor | None:
        return self._actors.get(gateway_id)

    def ids(self) -> set[int]:
        """The gateways with a connection on this node."""
        return set(self._actors)

    def online_ids(self) -> set[int]:
        return {gid for gid, a in self._actors.items() if a.subscribed and a.close_reason is None}

    def snapshot(self, gateway_id: int) -> dict | None:
        actor = self._actors.get(gateway_id)
        return actor.snapshot() if actor is not None else None

    def snapshots(self) -> dict[int, dict]:
        """Every live actor's snapshot (the backplane shares them with the other nodes)."""
        return {gid: actor.snapshot() for gid, actor in self._actors.items()}

    def live_leases(self) -> dict[int, str]:
        """gateway id -> lease of each connection still open here (its presence to refresh)."""
        return {gid: a.lease for gid, a in self._actors.items() if a.close_reason is None}

    def bucket_for(self, rate_per_minute: int | None, now: float) -> TokenBucket:
        rate = self.default_rate_per_minute if rate_per_minute is None else rate_per_minute
        return TokenBucket.full(rate, now)

    def heartbeat(self, gateway_id: int, battery: int | None, signal: int | None, queue: int | None) -> None:
        actor = self._actors.get(gateway_id)
        if actor is not None:
            actor.record_heartbeat(battery, signal, queue)

    def settings_changed(self, row: dict) -> None:
        """An operator changed a gateway: apply it to the live actor at once."""
        actor = self._actors.get(row["id"])
        if actor is None:
            return
        rate = row["send_rate_per_minute"]
        actor.bucket.set_rate(self.default_rate_per_minute if rate is None else rate, trio.current_time())
        actor.active = row["active"]
        actor.priority = row["priority"]  # both tell the registry, which reads the new window too
        if not actor.active:
            actor.drop_in_flight()  # the store returned its unsent messages to the queue
        self.changed()

    def key_rotated(self, gateway_id: int) -> None:
        """The gateway's key changed: a socket opened with the old key must reconnect."""
        actor = self._actors.get(gateway_id)
        if actor is not None:
            actor.close("key_rotated")

    def settled(self, gateway_id: int, *message_ids: str) -> None:
        """The phone reported on these messages: room again, ranked once for all of them."""
        actor = self._actors.get(gateway_id)
        if actor is not None:
            actor.settled(*message_ids)
            self.changed()

    def close_all(self, reason: str) -> list[GatewayActor]:
        actors = list(self._actors.values())
        for actor in actors:
            actor.close(reason)
        return actors
