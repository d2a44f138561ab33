"""Several real `smsgw serve` processes on one PostgreSQL database and one Redis (each test under
a Redis key prefix of its own): any node serves any phone."""

from __future__ import annotations

import json
import secrets
import signal
import statistics
import subprocess
from contextlib import asynccontextmanager, suppress

import attrs
import coredis
import httpx
import pytest
import trio
import trio_websocket

from tests.conftest import clean, phone, sql, wait_for
from tests.test_process import Process, cli, free_port

MAIN_REDIS = "redis://127.0.0.1:6379/0"


@attrs.define
class Endpoint:
    """A node as the test's phones and HTTP clients see it."""

    process: Process
    http: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.process.url.replace("http://", "ws://") + "/cable"

    async def send(self, key: str, message: str = "hi") -> str:
        r = await self.http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": message},
                                 headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
        return r.json()["message_id"]

    async def get(self, path: str, key: str) -> httpx.Response:
        return await self.http.get(path, headers={"Authorization": f"Bearer {key}"})

    def output(self) -> str:
        return self.process.proc.stdout.read().decode()


@asynccontextmanager
async def cluster(database_url: str, size: int, **env: str):
    """`size` nodes on the database and (by default) the machine's Redis under a fresh prefix."""
    prefix = f"test_{secrets.token_hex(4)}"
    env = {"REDIS_URL": MAIN_REDIS, "REDIS_PREFIX": prefix, **env}
    processes = [Process(database_url, **env) for _ in range(size)]
    try:
        async with trio.open_nursery() as nursery:
            for process in processes:
                nursery.start_soon(process.start)
        nodes = [Endpoint(p, httpx.AsyncClient(base_url=p.url, timeout=10)) for p in processes]
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.http.aclose()  # an idle keep-alive connection would hold up the graceful exit
    finally:
        for process in processes:
            if process.proc is not None and process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        for process in processes:
            if process.proc is not None:
                with suppress(trio.TooSlowError):
                    await process.wait(timeout=15)
                if process.proc.poll() is None:
                    process.proc.kill()
        async with coredis.Redis.from_url(MAIN_REDIS, decode_responses=True) as redis:
            keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
            if keys:
                await redis.delete(keys)


def client_key(database_url: str, *flags: str) -> str:
    return json.loads(cli(database_url, "keys", "create", "--name", "t", "--json", *flags).stdout)["api_key"]


async def register(node: Endpoint, device_id: str) -> str:
    r = await node.http.post("/api/v1/gateway/register", json={"device_id": device_id, "name": device_id})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


async def fleet_view(node: Endpoint, admin: str, shows, timeout: float = 5.0) -> list[dict]:
    """The admin gateway list on `node` once its first gateway `shows` something (snapshots of
    other nodes arrive within a fraction of a second)."""
    with trio.fail_after(timeout):
        while True:
            listing = (await node.get("/api/v1/admin/gateways", admin)).json()["gateways"]
            if listing and shows(listing[0]):
                return listing
            await trio.sleep(0.05)


async def next_sms_id(p, timeout: float = 5.0) -> str:
    return (await p.next_sms(timeout))["message_id"]


async def test_a_message_sent_through_one_node_reaches_a_phone_on_another(database_url):
    clean(database_url)
    key = client_key(database_url)
    async with cluster(database_url, 2) as (a, b):
        gateway = await register(a, "moto-1")
        async with phone(b, gateway) as p:
            latencies = []
            for n in range(5):
                started = trio.current_time()
                message_id = await a.send(key, f"m{n}")
                assert await next_sms_id(p) == message_id
                latencies.append(trio.current_time() - started)
                await p.report(message_id, "delivered")
            # Woken through Redis, not found by the dispatcher's 2 s sweep.
            assert statistics.median(latencies) < 0.3, latencies
            await wait_for(lambda: sql(database_url, "SELECT status FROM messages WHERE message_id = %s",
                                       (message_id,))[0]["status"] == "delivered")


async def test_a_phone_moving_to_another_node_keeps_its_messages(database_url):
    clean(database_url)
    key, admin = client_key(database_url), client_key(database_url, "--admin")
    async with cluster(database_url, 2) as (a, b):
        gateway = await register(a, "moto-1")
        async with phone(a, gateway) as old:
            message_id = await a.send(key)
            assert await next_sms_id(old) == message_id  # and never reported
            async with phone(b, gateway) as new:
                assert await next_sms_id(new) == message_id
                assert await old.next() == {"type": "disconnect", "reason": "replaced", "reconnect": False}
                await new.report(message_id, "delivered")
                await wait_for(lambda: sql(database_url, "SELECT status FROM messages")[0]["status"] == "delivered")
                listing = await fleet_view(a, admin, lambda g: g["connected"])
                assert listing[0]["status"] == "online"
                assert sql(database_url, "SELECT status FROM gateways")[0]["status"] == "online"


async def test_killing_a_node_moves_its_in_flight_messages_to_a_phone_on_another(database_url):
    clean(database_url)
    key = client_key(database_url)
    async with cluster(database_url, 2) as (a, b):
        on_a, on_b = await register(a, "on-a"), await register(a, "on-b")
        with suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError):
            async with phone(b, on_b) as doomed:
                sent = {await a.send(key, f"m{n}") for n in range(3)}
                assert {await next_sms_id(doomed) for _ in range(3)} == sent
                async with phone(a, on_a) as survivor:
                    b.process.proc.kill()  # SIGKILL: no goodbye, its presence in Redis just expires
                    killed_at = trio.current_time()
                    got = {await next_sms_id(survivor, timeout=30) for _ in range(3)}
                    assert got == sent
                    assert trio.current_time() - killed_at < 30
                    for message_id in sent:
                        await survivor.report(message_id, "delivered")
                    await wait_for(lambda: {r["status"] for r in sql(database_url, "SELECT status FROM messages")}
                                   == {"delivered"})
                    await wait_for(lambda: sql(database_url, "SELECT status FROM gateways WHERE device_id = 'on-b'")
                                   [0]["status"] == "offline", timeout=30)


async def test_rate_limits_hold_across_nodes(database_url):
    clean(database_url)
    key = client_key(database_url)
    async with cluster(database_url, 2, RATE_LIMIT_PER_KEY_PER_MINUTE="3") as (a, b):
        answers = [await node.get("/api/v1/sms/received", key) for node in (a, a, b, b)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert answers[3].json() == {"error": "Rate limit exceeded"}
        assert 1 <= int(answers[3].headers["Retry-After"]) <= 20
        assert answers[2].headers["RateLimit-Remaining"] == "0"


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, to stop and start again (never the machine's)."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    servers = []

    def start() -> None:
        servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop() -> None:
        servers[-1].kill()
        servers[-1].wait()

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop
    for server in servers:
        server.kill()
        server.wait()


async def test_a_redis_restart_is_survived(database_url, own_redis):
    clean(database_url)
    url, start_redis, stop_redis = own_redis
    key, admin = client_key(database_url), client_key(database_url, "--admin")
    async with cluster(database_url, 2, REDIS_URL=url) as (a, b):
        gateway = await register(a, "moto-1")
        async with phone(b, gateway) as p:
            before = await a.send(key, "before")
            assert await next_sms_id(p) == before
            stop_redis()
            await trio.sleep(1.0)  # both nodes have noticed
            # Down: nothing accepted is lost; A's message reaches B's phone through B's own sweep.
            during = [await a.send(key, "during"), await b.send(key, "during")]
            got = {await next_sms_id(p, timeout=10) for _ in during}
            assert got == set(during)
            start_redis()

            async def quick_delivery() -> bool:
                started = trio.current_time()
                message_id = await a.send(key, "after")
                assert await next_sms_id(p, timeout=5) == message_id
                return trio.current_time() - started < 0.3

            with trio.fail_after(20):
                while not all([await quick_delivery() for _ in range(3)]):
                    await trio.sleep(0.5)
            await fleet_view(a, admin, lambda g: g["connected"])  # B's snapshots are back in the new Redis
        for node in (a, b):
            await node.http.aclose()  # an idle keep-alive connection would hold up the graceful exit
            node.process.proc.send_signal(signal.SIGTERM)
            assert await node.process.wait() == 0
            log = node.output()
            assert log.count("redis unreachable") == 1, log
            assert log.count("redis reachable again") == 1, log
