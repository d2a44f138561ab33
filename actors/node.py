"""What one running node shares with its web layer: settings, the store, and the handles
(mailboxes, registries) of the actors in its tree."""

from __future__ import annotations

from typing import Any

import attrs

from config import Settings
from store.pool import Store

__all__ = ["Node"]


@attrs.define
class Node:
    settings: Settings
    store: Store
    # Filled in by the supervisor as it starts the tree; routes reach actors only through these.
    limits: Any = None       # web.ratelimit.RateLimits
    dispatcher: Any = None   # actors.dispatcher.Dispatcher (its wake() and mailbox)
    gateways: Any = None     # actors.registry.GatewayRegistry
    heartbeats: Any = None   # actors.heartbeats.HeartbeatWriter: socket heartbeats, stored together
    keys: Any = None         # actors.key_cache.KeyCache: authentication lookups
    sends: Any = None        # actors.group_commit.GroupCommitter writing accepted messages
    otp: Any = None          # actors.otp.OtpActor
    clock: Any = None        # actors.clock.WallClock: the timestamps rules compare
    webhooks: Any = None     # actors.webhooks.WebhookActor (its wake())
    metrics: Any = None      # actors.metrics.NodeMetrics: this node's Prometheus registry
    scheduler: Any = None    # actors.scheduler.Scheduler
    backplane: Any = None    # actors.backplane.Backplane: wake-ups, presence, snapshots, rate limits
    started_at: float = 0.0
    extra_actors: list = attrs.Factory(list)  # (name, actor) pairs the supervisor runs
