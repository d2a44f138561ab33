"""The node's web server: Hypercorn's trio worker loop, with `FastLane` taking the connections.

This is `hypercorn.trio.run.worker_serve` for plain TCP listeners (what a node binds: a host
and port, or the `fd://` socket `--workers` shares), with one change: each accepted connection
goes to `FastLane` (web/fast_lane.py), which serves HTTP/1.1 requests itself and hands
WebSockets and anything else to Hypercorn's `TCPServer`. Lifespan, graceful shutdown (stop
accepting, let requests finish for `graceful_timeout`) and the worker context are Hypercorn's.
"""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from web.fast_lane import FastLane

__all__ = ["serve"]


async def serve(app, config: Config, *, fast_lane: bool = True, max_body: int, body_too_large: str,
                shutdown_trigger: Callable[[], Awaitable[None]],
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on `config.bind` until `shutdown_trigger` returns; `task_status` gets the
    bound URLs. Returns once in-flight requests have finished (or `graceful_timeout` passed).
    Without `fast_lane`, it is Hypercorn's own `serve`."""
    if not fast_lane:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)
        return
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)  # what Hypercorn's own parts call
    state: dict = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    lane = FastLane(app, wrapped, config, context, state, max_body=max_body, body_too_large=body_too_large)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            if sockets.secure_sockets or sockets.quic_sockets:
                raise ValueError("the fast lane serves plain TCP only")
            listeners, binds = [], []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            server_nursery.start_soon(lane.watch_shutdown)
            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(functools.partial(trio.serve_listeners, lane, listeners,
                                                         handler_nursery=server_nursery))
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
