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

from actors.gateway import GatewayRegistry
from actors.rates import Gcra, RateDecision

__all__ = ["Backplane", "LocalBackplane", "Presence", "create_backplane", "new_node_id",
           "encode_snapshot", "decode_snapshot", "merge_fleet"]


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
        """A socket of this gateway opened here: record presence; an older socket elsewhere closes."""

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
