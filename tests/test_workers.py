"""`smsgw serve --workers N`: nodes sharing one port on one machine, under one supervisor."""

from __future__ import annotations

import json
import os
import secrets
import signal
from contextlib import asynccontextmanager

import coredis
import httpx
import trio

from bench.harness import process_tree
from tests.conftest import clean, phone, wait_for
from tests.test_cluster import MAIN_REDIS
from tests.test_process import Process, cli


def _workers_of(pid: int) -> set[int]:
    """The live (not zombie) child processes of `pid`."""
    return set(process_tree(pid)[1:])


@asynccontextmanager
async def running_workers(database_url: str, count: int = 2):
    """`smsgw serve` with `count` workers on the machine's Redis under a fresh prefix, up and
    with every worker started; yields the process and the worker pids. Cleans up after."""
    prefix = f"test_{secrets.token_hex(4)}"
    node = Process(database_url, WORKERS=str(count), REDIS_URL=MAIN_REDIS, REDIS_PREFIX=prefix)
    try:
        await node.start()
        workers = await wait_for(lambda: len(now := _workers_of(node.proc.pid)) == count and now, timeout=10)
        yield node, workers
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
        async with coredis.Redis.from_url(MAIN_REDIS, decode_responses=True) as redis:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
            if keys:
                await redis.delete(keys)


def test_several_workers_without_redis_is_a_configuration_error(database_url):
    done = cli(database_url, "serve", WORKERS="2")
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr
    done = cli(database_url, "serve", "--workers", "0")
    assert done.returncode == 2
    assert "between 1 and 256" in done.stderr


async def test_workers_share_the_port_come_back_after_kill_9_and_stop_on_sigterm(database_url):
    clean(database_url)
    key = json.loads(cli(database_url, "keys", "create", "--name", "t", "--json").stdout)["api_key"]
    async with running_workers(database_url) as (node, workers):
        async def post(path: str, body: dict, auth: str | None = None) -> httpx.Response:
            # A connection of its own each time: the kernel hands connections to either worker.
            async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
                headers = {"Authorization": f"Bearer {auth}"} if auth else {}
                return await http.post(path, json=body, headers=headers)

        gateway_key = (await post("/api/v1/gateway/register", {"device_id": "w1", "name": "p"})).json()["api_key"]

        class Target:
            ws_url = node.url.replace("http", "ws") + "/cable"

        async with phone(Target, gateway_key) as p:
            sent = set()
            for i in range(10):
                r = await post("/api/v1/sms/send", {"to": "+14155552671", "message": f"m{i}"}, key)
                assert r.status_code == 202, r.text
                sent.add(r.json()["message_id"])
            got = set()
            while got != sent:
                got.add((await p.next_sms(timeout=10))["message_id"])

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = await wait_for(lambda: (now := _workers_of(node.proc.pid)) and len(now) == 2
                                  and victim not in now and now, timeout=15)
        assert len(replaced - workers) == 1
        async with httpx.AsyncClient(base_url=node.url) as http:
            for _ in range(5):  # whichever worker takes the connection answers
                assert (await http.get("/up", headers={"Connection": "close"})).status_code == 200

        node.proc.send_signal(signal.SIGTERM)
        assert await node.wait(timeout=45) == 0
        assert not _workers_of(node.proc.pid)
        assert all(not os.path.exists(f"/proc/{pid}") or _is_zombie(pid) for pid in replaced)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


async def test_workers_outlive_the_thread_that_started_them_and_end_with_their_supervisor(database_url):
    clean(database_url)
    async with running_workers(database_url) as (node, workers):
        # The parent-death signal follows the thread that forked: workers started from one of
        # trio's cached threads got SIGTERM when that thread retired, after 10 idle seconds.
        await trio.sleep(12)
        assert _workers_of(node.proc.pid) == workers
        node.proc.kill()
        await node.wait(timeout=5)
        await wait_for(lambda: all(_is_zombie(pid) for pid in workers), timeout=15)  # gone (or reaped by init)
