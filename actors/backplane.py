"""The backplane: what the nodes of one deployment share beyond PostgreSQL.

One protocol, two implementations, the pattern of Action Cable's adapters:

- `LocalBackplane` serves a single node in-process: wake-ups are the dispatcher's own, presence
  is the gateway registry itself, rate limits are the in-process GCRA, snapshots are the live
  actors'.
- `RedisBackplane` (actors/backplane_redis.py, when `REDIS_URL` is set) lets several nodes behind
  a load balancer share one Redis: a message queued on one node wakes every node's dispatcher,
  each gateway's presence (`node`, `lease`) is a key with a TTL refreshed while its socket is
  open, a phone that reconnects to another node closes its older socket there ("newer socket
  wins"), admin routes read every node's live snapshots, and the HTTP rate limits are one atomic
  Lua GCRA on Redis' own clock.

PostgreSQL stays the source of truth: whatever the backplane loses (Redis down or restarted)
costs latency or precision (a wake-up waits for the dispatcher's sweep, rate limits count per
node), never an accepted message.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Callable, Protocol

import attrs
import trio

from actors.registry import GatewayRegistry
from actors.rates import Gcra, RateDecision

__all__ = ["Backplane", "LocalBackplane", "Presence", "create_backplane", "new_node_id",
           "encode_snapshot", "decode_snapshot", "merge_fleet", "GCRA_LUA", "ATTACH_LUA", "LEAVE_LUA",
           "REFRESH_LUA", "SNAPSHOT_WRITE_LUA", "SNAPSHOT_READ_LUA"]


@attrs.frozen
class Presence:
    """Which node holds a gateway's socket, and which connection (`lease`) it is."""

    node_id: str
    lease: str


class Backplane(Protocol):
    """What a node's actors and routes ask of the other nodes. Never raises for an unreachable
    Redis: each call falls back to what this node alone knows."""

    node_id: str

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The backplane's own tasks, until cancelled (run under supervision)."""

    def publish_wake(self) -> None:
        """Tell the other nodes' dispatchers that the queue changed; never blocks (coalesced)."""

    async def check_rate(self, gcra: Gcra, key: str) -> RateDecision:
        """Admit one request for `key` under `gcra`'s limit, counted across every node."""

    async def gateway_attached(self, gateway_id: int, lease: str) -> None:
        """This gateway subscribed on a socket here: record presence; an older socket on
        another node closes (`replaced`). Redis down: skipped."""

    async def gateway_left(self, gateway_id: int, lease: str) -> bool:
        """This connection ended: forget its presence; True when no other connection holds the
        gateway (it is now offline)."""

    async def gateway_changed(self, row: dict) -> None:
        """An operator changed a gateway here: the node holding it applies it to its actor."""

    async def key_rotated(self, gateway_id: int) -> None:
        """The gateway's key changed here: a socket opened elsewhere with the old key closes."""

    async def holder(self, gateway_id: int) -> Presence | None:
        """Which node and connection hold the gateway now, if any."""

    async def fleet_snapshots(self) -> dict[int, dict]:
        """Live health of every connected gateway on every node, by gateway id."""


def new_node_id() -> str:
    """A random node id for this process (NODE_ID overrides it)."""
    return f"node_{secrets.token_hex(6)}"


def create_backplane(settings, *, registry: GatewayRegistry, wake_local: Callable[[], None],
                     store=None) -> Backplane:
    """`RedisBackplane` when `settings.redis_url` is set, else `LocalBackplane`."""
    node_id = settings.node_id or new_node_id()
    if not settings.redis_url:
        return LocalBackplane(registry=registry, node_id=node_id)
    from actors.backplane_redis import RedisBackplane

    return RedisBackplane(url=settings.redis_url, prefix=settings.redis_prefix, node_id=node_id,
                          registry=registry, wake_local=wake_local, store=store)


@attrs.define(eq=False)
class LocalBackplane:
    """One node: everything the backplane carries is already in this process."""

    registry: GatewayRegistry
    node_id: str = attrs.Factory(new_node_id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def publish_wake(self) -> None:
        return None  # the dispatcher has woken itself; there is nobody else

    async def check_rate(self, gcra: Gcra, key: str) -> RateDecision:
        await trio.lowlevel.checkpoint()
        return gcra.check(key, trio.current_time())

    async def gateway_attached(self, gateway_id: int, lease: str) -> None:
        await trio.lowlevel.checkpoint()  # the registry already replaced an older socket

    async def gateway_left(self, gateway_id: int, lease: str) -> bool:
        await trio.lowlevel.checkpoint()
        actor = self.registry.get(gateway_id)
        return actor is None or actor.lease == lease

    async def gateway_changed(self, row: dict) -> None:
        await trio.lowlevel.checkpoint()

    async def key_rotated(self, gateway_id: int) -> None:
        await trio.lowlevel.checkpoint()

    async def holder(self, gateway_id: int) -> Presence | None:
        await trio.lowlevel.checkpoint()
        actor = self.registry.get(gateway_id)
        return Presence(self.node_id, actor.lease) if actor is not None and actor.close_reason is None else None

    async def fleet_snapshots(self) -> dict[int, dict]:
        await trio.lowlevel.checkpoint()
        return self.registry.snapshots()


# The pure helpers both sides of Redis use: snapshots as JSON, and the fleet's merged view.

def encode_snapshot(snapshot: dict) -> str:
    """An actor's `snapshot()` as JSON (its datetime as ISO 8601)."""
    heartbeat = snapshot.get("last_heartbeat_at")
    return json.dumps({**snapshot, "last_heartbeat_at": heartbeat.isoformat() if heartbeat else None},
                      separators=(",", ":"))


def decode_snapshot(text: str) -> dict:
    """The inverse of `encode_snapshot`."""
    snapshot = json.loads(text)
    if snapshot.get("last_heartbeat_at"):
        snapshot["last_heartbeat_at"] = datetime.fromisoformat(snapshot["last_heartbeat_at"])
    return snapshot


def merge_fleet(local: dict[int, dict], remote: list[dict[int, dict]]) -> dict[int, dict]:
    """One snapshot per gateway: this node's live actor first (freshest), else another node's,
    an online one before one that is not (a phone moving between nodes shows up on both)."""
    merged: dict[int, dict] = {}
    for node in remote:
        for gateway_id, snapshot in node.items():
            if gateway_id not in merged or (snapshot.get("online") and not merged[gateway_id].get("online")):
                merged[gateway_id] = snapshot
    for gateway_id, snapshot in local.items():
        if snapshot.get("online") or gateway_id not in merged:
            merged[gateway_id] = snapshot
    return merged


# What RedisBackplane keeps in Redis, as Lua run inside Redis: each step is atomic, and time is
# Redis' own (`TIME`), so the nodes' clocks never matter. Keys and values: actors/backplane_redis.py.

# One GCRA step, `Gcra.decide` of actors/rates.py step for step, on Redis' clock. ARGV[3], a
# `now` in seconds, is for the tests that compare it with `Gcra.decide`; nodes never send it.
GCRA_LUA = """
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local now
if ARGV[3] then now = tonumber(ARGV[3]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local interval = period / limit
-- On `ahead` (TAT - now), never on two epoch times: a double holds those to 0.2 us only.
local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then ahead = math.max(0, tonumber(stored) - now) end
local wait = ahead + interval - period  -- allow_at - now
if wait > 1e-9 then
  return {0, 0, string.format('%.17g', ahead), string.format('%.17g', wait)}
end
local remaining = math.min(limit - 1, math.max(0, math.floor((period - interval - ahead) / interval + 1e-9)))
redis.call('SET', KEYS[1], string.format('%.17g', now + ahead + interval), 'PX',
           math.ceil((ahead + interval) * 1000) + 1000)
return {1, remaining, string.format('%.17g', ahead + interval), '0'}
"""
ATTACH_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
# Forget a presence only if it is still this connection's: 1 when the gateway is now gone.
LEAVE_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
if string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', KEYS[1]); return 1 end
return 0
"""
# Extend each presence that is still ours; return the positions of those another lease took.
REFRESH_LUA = """
local taken = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 1]
  local lease = string.sub(mine, 1, string.find(mine, ' ', 1, true))
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #lease) ~= lease then taken[#taken + 1] = i
  else redis.call('SET', key, mine, 'PX', ARGV[1]) end
end
return taken
"""
SNAPSHOT_WRITE_LUA = """
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], ARGV[1])  -- a deployment whose nodes all stopped leaves nothing
return 1
"""
SNAPSHOT_READ_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if node ~= ARGV[2] then out[#out + 1] = redis.call('HGETALL', ARGV[1] .. node) end
end
return out
"""
