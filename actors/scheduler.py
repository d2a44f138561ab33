"""The scheduler: the seed's periodic jobs, and the queue's own clock.

- `check_gateway_health` (CheckGatewayHealthJob), every minute: gateways with no heartbeat for
  2 minutes and no socket on this node go offline; their unsent messages fail over.
- `cleanup_expired_otps` (CleanupExpiredOtpsJob), every 15 minutes: old OTP codes,
  Idempotency-Key answers older than 24 h, and webhook deliveries finished (delivered or dead)
  more than 7 days ago.
- `reset_daily_counters` (ResetDailyCountersJob), at midnight in `TZ_DAILY_RESET`.
- the tick, every `TICK_SECONDS` on every node: scheduled messages whose `send_at` came join
  the queue, queued messages past their TTL fail, and `smsgw_queue_depth` is refreshed.

Jobs run on wall-clock slots (minute and quarter-hour boundaries, local midnight), recorded in
`scheduler_runs`: a node that was down catches up a missed slot once when it starts, and with
several nodes on one database each slot runs on one of them (store/scheduler.py). In between,
the actor sleeps until the nearer of two known deadlines: the next tick or the next job slot.

The pure core (`due_jobs`, `next_due`, `is_due`) is at the bottom and table-tested.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta, timezone
from typing import Callable, Mapping
from zoneinfo import ZoneInfo

import attrs
import trio

from actors.metrics import NodeMetrics
from store import gateways as gateways_store
from store import idempotency
from store import scheduler as scheduler_store
from store import webhooks as webhooks_store

__all__ = ["Scheduler", "Job", "JOBS", "due_jobs", "next_due", "is_due", "due_at",
           "TICK_SECONDS", "STALE_HEARTBEAT_SECONDS"]

log = logging.getLogger("smsgw.scheduler")

TICK_SECONDS = 2.0               # scheduled sends leave at most this late; TTLs end this late
STALE_HEARTBEAT_SECONDS = 120.0  # the seed: no heartbeat for 2 minutes is offline
BUSY_RETRY_SECONDS = 5.0         # another node holds a job's lock: look again after this
OTP_CLEANUP_DEADLINE = 60.0


@attrs.frozen
class Job:
    name: str
    lock_id: int                          # pg_try_advisory_xact_lock key, fixed per job
    every: timedelta | None = None        # on multiples of this since the epoch (UTC)
    daily: bool = False                   # at local midnight in the reset time zone


_LOCK_BASE = 0x736D7367 << 32  # "smsg": keeps our advisory lock keys apart from others'
JOBS: tuple[Job, ...] = (
    Job("check_gateway_health", _LOCK_BASE + 1, every=timedelta(minutes=1)),
    Job("cleanup_expired_otps", _LOCK_BASE + 2, every=timedelta(minutes=15)),
    Job("reset_daily_counters", _LOCK_BASE + 3, daily=True),
)
_BY_NAME = {job.name: job for job in JOBS}


def _housekeeping(conn) -> tuple[int, int]:
    """The 15-minute cleanup's own rows: Idempotency-Key answers past 24 h, and webhook
    deliveries that ended more than DELIVERY_RETENTION_DAYS ago (the OTP actor purges its own)."""
    return idempotency.purge_expired(conn), webhooks_store.prune_finished(conn)


@attrs.define(eq=False)
class Scheduler:
    node: object                         # actors.node.Node: store, gateways, dispatcher, otp
    now: Callable[[], datetime]          # the wall clock (actors.clock.WallClock.now)
    metrics: NodeMetrics = attrs.Factory(NodeMetrics)
    tick_seconds: float = TICK_SECONDS
    stale_seconds: float = STALE_HEARTBEAT_SECONDS
    last_runs: dict[str, datetime | None] = attrs.Factory(dict)
    _busy_until: dict[str, float] = attrs.Factory(dict)  # job -> trio time to try again

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.node.settings.tz_daily_reset)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run jobs as they fall due and tick, until cancelled.

        A database error propagates (the supervisor restarts the scheduler, which reloads its
        last runs); a job cut short by cancellation rolls back whole and runs again later."""
        self.last_runs = await self.node.store.run(scheduler_store.load_runs, [j.name for j in JOBS], self.now())
        self._busy_until.clear()
        task_status.started()
        next_tick = trio.current_time()
        while True:
            for name in self.due():
                await self.run_job(name)
            if trio.current_time() >= next_tick:
                await self.tick()
                next_tick = trio.current_time() + self.tick_seconds
            await trio.sleep_until(min(next_tick, self._next_job_deadline()))

    def due(self) -> list[str]:
        """Jobs due now on this node's view, less those another node is running."""
        clock = trio.current_time()
        return [name for name in due_jobs(self.last_runs, self.now(), self.tz)
                if self._busy_until.get(name, clock) <= clock]

    async def run_job(self, name: str) -> str:
        """Run job `name` if it is still due across the nodes; return `ran`, `not_due` or `busy`."""
        job, now, tz = _BY_NAME[name], self.now(), self.tz
        node = self.node
        match name:
            case "check_gateway_health":
                live = node.gateways.ids()
                if getattr(node, "backplane", None) is not None:
                    live |= set(await node.backplane.fleet_snapshots())  # sockets on every node
                body, args = scheduler_store.mark_stale_gateways_offline, (live, self.stale_seconds)
            case "cleanup_expired_otps":
                body, args = _housekeeping, ()
            case "reset_daily_counters":
                body, args = gateways_store.reset_daily_counters, ()
            case _:
                raise ValueError(f"unknown job {name!r}")
        outcome = await node.store.run(scheduler_store.run_job, name, job.lock_id, now,
                                       lambda last: is_due(job, last, now, tz), body, *args)
        if outcome.state == "busy":
            self._busy_until[name] = trio.current_time() + BUSY_RETRY_SECONDS
            return outcome.state
        self._busy_until.pop(name, None)
        self.last_runs[name] = outcome.last_run_at
        if outcome.state == "ran":
            await self._after(name, outcome.result)
        return outcome.state

    async def _after(self, name: str, result: object) -> None:
        """What follows a job's committed transaction on this node."""
        node = self.node
        if name == "check_gateway_health" and result:
            log.info("marked offline (no heartbeat for %.0f s): %s", self.stale_seconds,
                     ", ".join(g["device_id"] for g in result))
            node.dispatcher.wake()
        elif name == "cleanup_expired_otps":
            keys, deliveries = result
            if keys:
                log.info("purged %d idempotency keys older than 24 h", keys)
            if deliveries:
                log.info("purged %d finished webhook deliveries older than %d days", deliveries,
                         webhooks_store.DELIVERY_RETENTION_DAYS)
            if node.otp is not None:
                with trio.fail_after(OTP_CLEANUP_DEADLINE):
                    await node.otp.cleanup_expired()
        elif name == "reset_daily_counters":
            log.info("daily counters reset (%s)", node.settings.tz_daily_reset)

    async def tick(self) -> scheduler_store.TickResult:
        """Release due scheduled messages, expire stale queued ones, refresh the queue gauge."""
        result = await self.node.store.run(scheduler_store.queue_tick)
        self.metrics.set_queue_depth(result.queue_depth)
        self.metrics.expired(result.expired)
        if result.released:
            self.node.dispatcher.wake()
        if result.expired:
            log.info("expired %d queued messages past their TTL", result.expired)
        return result

    def _next_job_deadline(self) -> float:
        """The Trio time at which the next job falls due (or its lock is worth trying again)."""
        clock, now = trio.current_time(), self.now()
        deadlines = []
        for job in JOBS:
            if job.name in self._busy_until:
                deadlines.append(self._busy_until[job.name])
            else:
                when = due_at(job, self.last_runs.get(job.name), self.tz)
                deadlines.append(clock + max(0.0, (when - now).total_seconds()) if when else clock)
        return min(deadlines)


# The pure core: no clock, no database.

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def due_at(job: Job, last: datetime | None, tz: ZoneInfo) -> datetime | None:
    """When `job` falls due after a run at `last`: the next slot strictly after it; None
    (due at once) when it never ran."""
    if last is None:
        return None
    if job.daily:
        local_day = last.astimezone(tz).date()
        # A zone whose clocks skip midnight gets the pre-transition offset: within the hour.
        return datetime.combine(local_day + timedelta(days=1), time(0), tzinfo=tz).astimezone(timezone.utc)
    assert job.every is not None
    slots = (last - _EPOCH) // job.every
    return _EPOCH + (slots + 1) * job.every


def is_due(job: Job, last: datetime | None, now: datetime, tz: ZoneInfo) -> bool:
    """True when a slot of `job` has come since `last` (several missed slots are one run)."""
    when = due_at(job, last, tz)
    return when is None or now >= when


def due_jobs(last_runs: Mapping[str, datetime | None], now: datetime, tz: ZoneInfo) -> list[str]:
    """The names of the jobs due at `now`, in `JOBS` order."""
    return [job.name for job in JOBS if is_due(job, last_runs.get(job.name), now, tz)]


def next_due(last_runs: Mapping[str, datetime | None], now: datetime, tz: ZoneInfo) -> datetime:
    """The earliest moment at or after `now` when some job falls due."""
    times = [due_at(job, last_runs.get(job.name), tz) or now for job in JOBS]
    return max(now, min(times))
