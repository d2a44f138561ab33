"""`RedisBackplane`: the backplane of several nodes sharing one Redis (coredis, native on Trio).

Keys and channels, all under `REDIS_PREFIX` (`p`):
- `p:wake` (channel): a message was queued; every other node's dispatcher runs a round. At most
  one publish per `WAKE_COALESCE` burst.
- `p:presence:<gateway_id>` = "<lease> <node_id>", TTL `presence_ttl`, refreshed every
  `refresh_interval` while the socket is open. Set when the phone subscribes, which also
  publishes on `p:replace`: another node holding an older connection of that phone closes it
  (`replaced`) once the key confirms it is no longer the holder. A refresh that finds another
  lease in the key closes the local connection too (a lost publish).
- `p:snapshots:<node_id>` (hash gateway_id -> JSON of `GatewayActor.snapshot()`), rewritten every
  `snapshot_interval` and soon after a phone comes or goes; `p:nodes` (sorted set, score = when
  that node's hash expires) lists the nodes to read.
- `p:rate:<key>`: the TAT of one GCRA key, written by one Lua script on Redis' clock.
- `p:gateway` (channel): an operator's change or a key rotation, for the node holding the phone.

Redis down: each call falls back to this node alone (local GCRA, local wake-up, no presence) and
the outage is logged once; the subscriber reconnects with capped exponential backoff and, once
back, re-announces presence and snapshots. A node killed outright leaves its phones' presence to
expire: every node's sweep then returns what those connections held to the queue (by lease, so
a phone that already reconnected elsewhere keeps what it holds) and marks them offline, within
`presence_ttl + refresh_interval` (20 s). The sweep trusts a missing key only once its own link
has been up a whole TTL, since a restarted Redis comes back empty.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Awaitable, Callable, TypeVar

import anyio
import attrs
import coredis
import trio
from coredis.commands.script import Script
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from actors.backoff import exponential_delay
from actors.backplane import (ATTACH_LUA, GCRA_LUA, LEAVE_LUA, REFRESH_LUA, SNAPSHOT_READ_LUA, SNAPSHOT_WRITE_LUA,
                              Presence, decode_snapshot, encode_snapshot, merge_fleet)
from actors.registry import GatewayRegistry
from actors.rates import Gcra, RateDecision
from store import gateways as gateways_store

__all__ = ["RedisBackplane", "RedisUnavailable"]

log = logging.getLogger("smsgw.backplane")
T = TypeVar("T")

PRESENCE_TTL = 15.0
REFRESH_INTERVAL = 5.0
SNAPSHOT_INTERVAL = 3.0
SNAPSHOT_SPACING = 0.2     # a change is written this long after it (and what followed it)
WAKE_COALESCE = 0.005
COMMAND_DEADLINE = 1.0     # one Redis round trip; past it the link counts as down
CONNECT_TIMEOUT = 1.0
SWEEP_DEADLINE = 10.0
UNREACHABLE = (RedisError, OSError, TimeoutError, trio.TooSlowError)

_GCRA, _ATTACH, _LEAVE, _REFRESH, _SNAPSHOT_WRITE, _SNAPSHOT_READ = (
    Script(script=source) for source in (GCRA_LUA, ATTACH_LUA, LEAVE_LUA, REFRESH_LUA, SNAPSHOT_WRITE_LUA,
                                         SNAPSHOT_READ_LUA))


class RedisUnavailable(Exception):
    """Redis did not answer in time (or is known to be down): fall back to this node alone."""


@attrs.define(eq=False)
class RedisBackplane:
    url: str
    prefix: str
    node_id: str
    registry: GatewayRegistry
    wake_local: Callable[[], None]
    store: object = None  # store.pool.Store: the sweep of dead nodes' leases (None: no sweep)
    presence_ttl: float = PRESENCE_TTL
    refresh_interval: float = REFRESH_INTERVAL
    snapshot_interval: float = SNAPSHOT_INTERVAL
    _client: coredis.Redis | None = None
    _up_since: float | None = None     # trio time the link last came up; None while down
    _outage_logged: bool = False
    _outage_began: float = 0.0
    _session: trio.CancelScope | None = None
    _wake_wanted: trio.Event = attrs.Factory(trio.Event)
    _snapshot_due: trio.Event = attrs.Factory(trio.Event)
    _announced: dict[int, str] = attrs.Factory(dict)  # gateway id -> lease whose presence we set

    @property
    def up(self) -> bool:
        return self._up_since is not None

    def key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Subscriber, wake publisher, presence refresh, snapshots and the sweep, until cancelled.
        Starts at once whether or not Redis answers; Redis errors never end it."""
        client = coredis.Redis.from_url(self.url, decode_responses=True, connect_timeout=CONNECT_TIMEOUT,
                                        stream_timeout=COMMAND_DEADLINE * 5, retry_policy=NoRetryPolicy())
        async with client:
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    for task in (self._subscriber, self._wake_publisher, self._refresher,
                                 self._snapshot_publisher, self._sweeper):
                        nursery.start_soon(task)
                    task_status.started()
            finally:
                self._up_since, self._client = None, None
                with trio.move_on_after(0.5, shield=True):
                    try:
                        await client.zrem(self.key("nodes"), [self.node_id])
                        await client.delete([self.key("snapshots", self.node_id)])
                    except UNREACHABLE:
                        pass

    # --- what the node asks ------------------------------------------------------------------

    def publish_wake(self) -> None:
        self._wake_wanted.set()

    async def check_rate(self, gcra: Gcra, key: str) -> RateDecision:
        if gcra.limit == 0:
            return gcra.check(key, trio.current_time())
        try:
            allowed, remaining, reset_after, retry_after = await self._redis(
                lambda c: _GCRA(keys=[self.key("rate", key)], args=[gcra.limit, gcra.period], client=c))
        except RedisUnavailable:
            return gcra.check(key, trio.current_time())
        return RateDecision(allowed=bool(int(allowed)), limit=gcra.limit, remaining=int(remaining),
                            reset_after=float(reset_after), retry_after=float(retry_after))

    async def gateway_attached(self, gateway_id: int, lease: str) -> None:
        message = json.dumps({"g": gateway_id, "l": lease, "n": self.node_id})
        try:
            await self._redis(lambda c: _ATTACH(keys=[self.key("presence", gateway_id)], client=c, args=[
                f"{lease} {self.node_id}", int(self.presence_ttl * 1000), self.key("replace"), message]))
        except RedisUnavailable:
            pass
        self._announced[gateway_id] = lease
        self._snapshot_due.set()

    async def gateway_left(self, gateway_id: int, lease: str) -> bool:
        self._snapshot_due.set()
        if self._announced.get(gateway_id) == lease:
            del self._announced[gateway_id]
        try:
            return bool(await self._redis(
                lambda c: _LEAVE(keys=[self.key("presence", gateway_id)], args=[lease], client=c)))
        except RedisUnavailable:
            return True

    async def gateway_changed(self, row: dict) -> None:
        await self._publish("gateway", {"kind": "settings", "id": row["id"], "active": row["active"],
                                        "priority": row["priority"],
                                        "send_rate_per_minute": row["send_rate_per_minute"]})

    async def key_rotated(self, gateway_id: int) -> None:
        await self._publish("gateway", {"kind": "key_rotated", "id": gateway_id})

    async def holder(self, gateway_id: int) -> Presence | None:
        try:
            value = await self._redis(lambda c: c.get(self.key("presence", gateway_id)))
        except RedisUnavailable:
            actor = self.registry.get(gateway_id)
            return Presence(self.node_id, actor.lease) if actor is not None else None
        if value is None:
            return None
        lease, _, node_id = value.partition(" ")
        return Presence(node_id, lease)

    async def fleet_snapshots(self) -> dict[int, dict]:
        local = self.registry.snapshots()
        try:
            nodes = await self._redis(lambda c: _SNAPSHOT_READ(keys=[self.key("nodes")], client=c,
                                                             args=[self.key("snapshots", ""), self.node_id]))
        except RedisUnavailable:
            return local
        remote = [{int(flat[i]): decode_snapshot(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in nodes]
        return merge_fleet(local, remote)

    # --- the link ----------------------------------------------------------------------------

    async def _redis(self, command: Callable[[coredis.Redis], Awaitable[T]], *,
                     deadline: float = COMMAND_DEADLINE, coming_up: bool = False) -> T:
        """Run one command under a deadline; `RedisUnavailable` while the link is down."""
        client = self._client
        if client is None or (self._up_since is None and not coming_up):
            raise RedisUnavailable()
        try:
            with trio.fail_after(deadline):
                return await command(client)
        except UNREACHABLE as exc:
            self._lost(exc)
            raise RedisUnavailable() from exc

    async def _publish(self, channel: str, payload: dict) -> None:
        text = json.dumps({**payload, "n": self.node_id})
        try:
            await self._redis(lambda c: c.publish(self.key(channel), text))
        except RedisUnavailable:
            pass

    def _lost(self, exc: BaseException) -> None:
        """The link broke: log once per outage, and make the subscriber reconnect."""
        if not self._outage_logged:
            self._outage_logged, self._outage_began = True, trio.current_time()
            log.warning("redis unreachable (%s: %s): this node keeps serving its own gateways; rate limits"
                        " count on this node, wake-ups stay local, presence is not shared until it is back",
                        type(exc).__name__, exc)
        self._up_since = None
        if self._session is not None:
            self._session.cancel()

    async def _subscriber(self) -> None:
        attempt = 0
        channels = [self.key("wake"), self.key("replace"), self.key("gateway")]
        while True:
            try:
                async with self._client.pubsub(channels=channels, ignore_subscribe_messages=True,
                                               retry_policy=NoRetryPolicy()) as pubsub:
                    with trio.CancelScope() as self._session:
                        await self._came_up()
                        attempt = 0
                        async for message in pubsub:
                            await self._received(message["channel"], message["data"])
            except* anyio.ClosedResourceError:
                pass  # coredis unsubscribing on a connection already gone (cancelled, or lost: below)
            except* (*UNREACHABLE, RedisUnavailable) as group:
                self._lost(group.exceptions[0])
            finally:
                self._session = None
            attempt += 1
            await trio.sleep(exponential_delay(attempt, base=0.2, cap=5.0, rand=random.random))

    async def _came_up(self) -> None:
        await self._refresh_presence(coming_up=True)  # a restarted Redis came back empty
        if self._outage_logged:
            log.warning("redis reachable again after %.0f s", trio.current_time() - self._outage_began)
        else:
            log.info("backplane on redis (prefix %s, node %s)", self.prefix, self.node_id)
        self._outage_logged = False
        self._up_since = trio.current_time()
        self._snapshot_due.set()
        self.wake_local()               # whatever the others queued while we could not hear them
        self.publish_wake()

    async def _received(self, channel: str, data: str) -> None:
        if channel == self.key("wake"):
            if data != self.node_id:
                self.wake_local()
            return
        try:
            message = json.loads(data)
            if message["n"] == self.node_id:
                return
            await self._apply(channel, message)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed message on %s: %s", channel, exc)

    async def _apply(self, channel: str, message: dict) -> None:
        if channel == self.key("replace"):
            actor = self.registry.get(message["g"])
            if (actor is not None and actor.lease != message["l"]
                    and self._announced.get(message["g"]) == actor.lease):
                # The key says who subscribed last: an announcement older than our own (delivered
                # late) must not close our socket; one not yet announced will win by announcing.
                holder = await self.holder(message["g"])
                if holder is not None and holder.lease != actor.lease:
                    actor.close("replaced")
        elif message.get("kind") == "settings":
            if self.registry.get(message["id"]) is not None:
                self.registry.settings_changed(message)
        elif message.get("kind") == "key_rotated":
            self.registry.key_rotated(message["id"])

    # --- periodic work -----------------------------------------------------------------------

    async def _wake_publisher(self) -> None:
        while True:
            await self._wake_wanted.wait()
            self._wake_wanted = trio.Event()
            try:
                await self._redis(lambda c: c.publish(self.key("wake"), self.node_id))
            except RedisUnavailable:
                pass
            await trio.sleep(WAKE_COALESCE)

    async def _refresher(self) -> None:
        while True:
            await trio.sleep(self.refresh_interval)
            try:
                await self._refresh_presence()
            except RedisUnavailable:
                pass

    def _held(self) -> dict[int, str]:
        """The presences this node announced whose connections are still open (the others are
        forgotten)."""
        live = self.registry.live_leases()
        self._announced = {g: lease for g, lease in self._announced.items() if live.get(g) == lease}
        return dict(self._announced)

    async def _refresh_presence(self, *, coming_up: bool = False) -> None:
        held = sorted(self._held().items())
        for start in range(0, len(held), 1000):
            chunk = held[start:start + 1000]
            taken = await self._redis(lambda c: _REFRESH(
                client=c, keys=[self.key("presence", g) for g, _ in chunk],
                args=[int(self.presence_ttl * 1000), *(f"{lease} {self.node_id}" for _, lease in chunk)]),
                coming_up=coming_up)
            for position in taken:
                gateway_id, lease = chunk[int(position) - 1]
                actor = self.registry.get(gateway_id)
                if actor is not None and actor.lease == lease:
                    actor.close("replaced")

    async def _snapshot_publisher(self) -> None:
        ttl_ms = int(self.snapshot_interval * 3 * 1000)
        while True:
            with trio.move_on_after(self.snapshot_interval):
                await self._snapshot_due.wait()
                await trio.sleep(SNAPSHOT_SPACING)  # a phone that just came is subscribed by then
            self._snapshot_due = trio.Event()
            fields = [part for gateway_id, snapshot in self.registry.snapshots().items()
                      for part in (str(gateway_id), encode_snapshot(snapshot))]
            try:
                await self._redis(lambda c: _SNAPSHOT_WRITE(
                    client=c, keys=[self.key("snapshots", self.node_id), self.key("nodes")],
                    args=[ttl_ms, self.node_id, *fields]))
            except RedisUnavailable:
                pass

    async def _sweeper(self) -> None:
        if self.store is None:
            return
        while True:
            await trio.sleep(self.refresh_interval)
            if self._up_since is None or trio.current_time() - self._up_since < self.presence_ttl:
                continue  # a key missing now may only mean Redis restarted empty
            with trio.move_on_after(SWEEP_DEADLINE):
                try:
                    await self.sweep()
                except RedisUnavailable:
                    pass

    async def sweep(self) -> tuple[int, list[dict]]:
        """Return to the queue what connections without presence held, mark their phones
        offline; return how many messages and which gateways. Safe on every node at once."""
        leases, stale = await self.store.run(gateways_store.orphan_candidates, self.presence_ttl)
        ids = sorted({g for g, _ in leases} | set(stale))
        if not ids:
            return 0, []
        values = await self._redis(lambda c: c.mget([self.key("presence", g) for g in ids]))
        present = {g: v.partition(" ")[0] for g, v in zip(ids, values) if v is not None}
        local = self.registry.live_leases()  # after the query: a connection opened since is in it
        held = set(local.values())
        orphans = [(g, lease) for g, lease in leases if lease not in held and present.get(g) != lease]
        gone = [g for g in stale if g not in present and g not in local]
        requeued, offline = await self.store.run(gateways_store.reclaim_orphans, orphans, gone, self.presence_ttl)
        if requeued or offline:
            log.info("reclaimed %d messages from connections no node holds; offline: %s", requeued,
                     ", ".join(g["device_id"] for g in offline) or "none")
            self.wake_local()
            self.publish_wake()
        return requeued, offline

