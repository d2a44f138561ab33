"""Accepting messages: single sends against the bare framework, and bulk sends.

The framework ceiling is a trivial JSON POST in Quart-Trio behind the gateway's own server
(web/server.py: the fast lane, or Hypercorn alone with HTTP_SERVER=hypercorn; one process); the
bare-server ceiling the same POST as a plain ASGI callable, the path single sends take. Both are
served by `python -m bench.accept --ceiling-server PORT`; the single-send rate is `POST /api/v1/sms/send` with no phones connected (messages only queue), so it measures
the accept path: authentication, validation, the group commit. `python -m bench.accept` prints
the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.harness import (ROOT, _CpuWatch, create_client_key, create_database, drop_database, running_server,
                           server_env)
from bench.senders import JsonPoster, send_messages

__all__ = ["main"]


def ceiling_app():
    """Two trivial JSON POSTs behind the gateway's own server (web/server.py): `/echo` in
    Quart-Trio, the framework the API is written in (the "bare framework ceiling"), and
    `/echo-bare` as a plain ASGI callable, the path a single send now takes
    (web/direct_send.py): the server alone."""
    from quart import request
    from quart_trio import QuartTrio

    app = QuartTrio("ceiling")

    @app.post("/echo")
    async def echo():
        body = await request.get_json()
        return {"ok": True, "to": body.get("to")}, 202

    async def serve(scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/echo-bare":
            await app(scope, receive, send)
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = json.dumps({"ok": True, "to": json.loads(b"".join(parts)).get("to")}).encode()
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return serve


async def serve_ceiling(port: int) -> None:
    """The trivial app on the gateway's own server: its fast lane, or Hypercorn alone with
    HTTP_SERVER=hypercorn, as `smsgw serve` reads it."""
    import os

    from hypercorn.config import Config

    from web.app import BODY_TOO_LARGE, MAX_BULK_BODY_BYTES
    from web.server import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    await serve(ceiling_app(), config, fast_lane=os.environ.get("HTTP_SERVER", "fast") == "fast",
                max_body=MAX_BULK_BODY_BYTES, body_too_large=BODY_TOO_LARGE, shutdown_trigger=trio.sleep_forever)


async def post_many(url: str, path: str, key: str, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    """POST every body from `concurrency` keep-alive connections; (seconds, answers below 300)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    send, receive = trio.open_memory_channel(concurrency)
    ok = 0

    async def worker(bodies_in: trio.MemoryReceiveChannel) -> None:
        nonlocal ok
        http = JsonPoster(host, int(port), key)
        async with bodies_in:
            async for body in bodies_in:
                status, _ = await http.post(path, body)
                ok += status < 300
        await http.close()

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for body in bodies:
                await send.send(body)
    return time.monotonic() - started, ok


async def measure(opts) -> dict:
    """The ceiling and the single sends in alternating rounds (the machine's load drifts: a
    ratio from one round of each can be off by a third), then the bulk sends."""
    work = Path(tempfile.mkdtemp(prefix="smsgw-accept-"))
    dsn = create_database()
    try:
        env = server_env(dsn, work)
        subprocess.run([sys.executable, "-m", "cli", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
        key = create_client_key(env)
        port = opts.ceiling_port
        ceiling = subprocess.Popen([sys.executable, "-m", "bench.accept", "--ceiling-server", str(port)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with running_server(env, work / "server.log") as server:
                await trio.sleep(2.0)
                body = json.dumps({"to": "+14155552671", "message": "hello"}).encode()
                ceilings, bares, singles, errors = [], [], [], {}
                ceiling_cpu, bare_cpu, single_cpu = [], [], []  # server CPU ms per request answered
                for _ in range(opts.rounds):
                    for path, rates, cpus in (("/echo", ceilings, ceiling_cpu), ("/echo-bare", bares, bare_cpu)):
                        cpu = _CpuWatch.start({"server": ceiling.pid})
                        seconds, ok = await post_many(f"http://127.0.0.1:{port}", path, key,
                                                      [body] * opts.requests, opts.concurrency)
                        cpu.stop()
                        rates.append(ok / seconds)
                        cpus.append(1000 * cpu.seconds["server"] / max(1, ok))
                    cpu = _CpuWatch.start({"server": server.pid})
                    sent = await send_messages(server.url, key, opts.requests, concurrency=opts.concurrency,
                                               rate=None)
                    cpu.stop()
                    singles.append(len(sent.accepted) / sent.elapsed)
                    single_cpu.append(1000 * cpu.seconds["server"] / max(1, len(sent.accepted)))
                    errors.update(sent.errors)
                entries = [{"to": f"+1415555{i % 10_000:04d}", "message": f"bulk {i}"} for i in range(1000)]
                bulk = json.dumps({"messages": entries}).encode()
                seconds, ok = await post_many(server.url, "/api/v1/sms/send_bulk", key, [bulk] * opts.bulk_requests,
                                              opts.bulk_concurrency)
                bulk_rate = ok * 1000 / seconds
        finally:
            ceiling.terminate()
            ceiling.wait(timeout=10)
        ratios = [s / c for s, c in zip(singles, ceilings)]
        cpu_ratios = [c / s for c, s in zip(ceiling_cpu, single_cpu)]
        return {"ceiling_posts_per_s": round(statistics.median(ceilings)),
                "bare_server_posts_per_s": round(statistics.median(bares)),
                "bare_server_cpu_ms_per_post": round(statistics.median(bare_cpu), 3),
                "single_fraction_of_bare_server": round(statistics.median(
                    [s / b for s, b in zip(singles, bares)]), 2),
                "single_sends_per_s": round(statistics.median(singles)),
                "single_fraction_of_ceiling": round(statistics.median(ratios), 2),
                # The same fraction from the server's CPU per request (both servers are bound by
                # their one core): steadier than rates while neighbours come and go.
                "ceiling_cpu_ms_per_post": round(statistics.median(ceiling_cpu), 3),
                "single_cpu_ms_per_send": round(statistics.median(single_cpu), 3),
                "single_fraction_of_ceiling_by_cpu": round(statistics.median(cpu_ratios), 2),
                "rounds": [{"ceiling": round(c), "single": round(s), "fraction": round(r, 2),
                            "fraction_by_cpu": round(cr, 2)}
                           for c, s, r, cr in zip(ceilings, singles, ratios, cpu_ratios)],
                "single_errors": errors, "bulk_messages_per_s": round(bulk_rate),
                "bulk_requests": opts.bulk_requests, "bulk_ok": ok, "concurrency": opts.concurrency}
    finally:
        drop_database(dsn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.accept")
    p.add_argument("--requests", type=int, default=3_000, help="requests in each round of each")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the ceiling and single sends")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--bulk-requests", type=int, default=30)
    p.add_argument("--bulk-concurrency", type=int, default=4)
    p.add_argument("--ceiling-port", type=int, default=3931)
    p.add_argument("--ceiling-server", type=int, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.ceiling_server:
        from cli import tune_gc

        tune_gc()  # the runtime the gateway runs with: the ceiling is the stack, not its defaults
        trio.run(serve_ceiling, opts.ceiling_server)
        return 0
    print(json.dumps(trio.run(measure, opts), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
