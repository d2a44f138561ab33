"""The two-node scenario: the same load on one node and on two nodes sharing PostgreSQL and Redis.

Each node gets half the simulated phones (a fleet process of its own) and half the HTTP senders,
as a load balancer without sticky sessions would spread them; a message posted to one node is
often delivered by a phone on the other. Reports delivered/s for both and their ratio.

`scenario_two_nodes(dsn, key, opts, work)` is meant to be called from bench/run.py (it uses that
module's helpers and `opts.messages`, `opts.gateways`, `opts.concurrency`); `python -m
bench.two_nodes` runs it alone on a fresh database and prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from bench.harness import (_max_message_row, create_client_key, create_database, drop_database, raise_nofile,
                           running_fleet, running_server, server_env, wait_delivered)
from bench.senders import send_messages

__all__ = ["scenario_two_nodes", "main"]

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def scenario_two_nodes(dsn: str, key: str, opts, work: Path, *, redis_url: str = REDIS_URL) -> dict:
    """Run the same load (`opts.messages` over `opts.gateways` phones) on one node (no Redis, as
    it runs by default), then on two (Redis backplane); return both figures, the ratio of
    delivered/s, and what the machine had to share."""
    one = await _measure(dsn, key, opts, work, nodes=1, redis_url=redis_url)
    two = await _measure(dsn, key, opts, work, nodes=2, redis_url=redis_url)
    ratio = (round(two["delivered_per_s"] / one["delivered_per_s"], 2)
             if one["delivered_per_s"] and two["delivered_per_s"] else None)
    return {"one_node": one, "two_nodes": two, "ratio": ratio, "goal": "≥ 1.7×",
            "note": f"{os.cpu_count()} cores shared by the nodes, PostgreSQL, Redis, the phones and the senders"}


async def _measure(dsn: str, key: str, opts, work: Path, *, nodes: int, redis_url: str) -> dict:
    env = server_env(dsn, work)  # one node as it runs by default: no Redis
    if nodes > 1:
        env.update(REDIS_URL=redis_url, REDIS_PREFIX=f"bench_{secrets.token_hex(4)}")
    count = opts.messages
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(running_server(env, work / f"nodes{nodes}-{i}.log"))
                   for i in range(nodes)]
        for i, server in enumerate(servers):
            await stack.enter_async_context(running_fleet(server.url, max(1, opts.gateways // nodes), work,
                                                          prefix=f"n{nodes}x{i}"))
        floor = await trio.to_thread.run_sync(_max_message_row, dsn)
        shares = [count // nodes + (1 if i < count % nodes else 0) for i in range(nodes)]
        results: list = [None] * nodes
        wall_start = time.time()

        async def send_through(i: int) -> None:
            results[i] = await send_messages(servers[i].url, key, shares[i],
                                             concurrency=max(1, opts.concurrency // nodes), rate=None)

        async with trio.open_nursery() as nursery:
            for i in range(nodes):
                nursery.start_soon(send_through, i)
        accepted = sum(len(r.accepted) for r in results)
        done = await wait_delivered(dsn, floor, accepted, deadline=max(60.0, count / 50))
    span = (done["last_delivered_epoch"] or time.time()) - wall_start
    return {"nodes": nodes, "messages": count, "gateways": opts.gateways, "accepted": accepted,
            "errors": {k: v for r in results for k, v in r.errors.items()},
            "accepted_per_s": round(accepted / max(r.elapsed for r in results), 1),
            "delivered": done["delivered"], "failed": done["failed"], "timed_out": done["timed_out"],
            "delivered_per_s": round(done["delivered"] / span, 1) if span > 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.two_nodes", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5_000)
    p.add_argument("--gateways", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--redis-url", default=REDIS_URL)
    opts = p.parse_args(argv)
    raise_nofile()

    async def run() -> dict:
        work = Path(tempfile.mkdtemp(prefix="smsgw-two-nodes-"))
        dsn = await trio.to_thread.run_sync(create_database)
        try:
            key = await trio.to_thread.run_sync(create_client_key, server_env(dsn, work))
            return await scenario_two_nodes(dsn, key, opts, work, redis_url=opts.redis_url)
        finally:
            await trio.to_thread.run_sync(drop_database, dsn)

    print(json.dumps(trio.run(run), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
