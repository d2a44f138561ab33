"""The backplane: `LocalBackplane` and `RedisBackplane` (on the real Redis at 127.0.0.1:6379,
each test under a key prefix of its own) behind one suite, then what only several nodes do."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import attrs
import coredis
import pytest
import trio

from actors.backplane import (GCRA_LUA, LocalBackplane, Presence, decode_snapshot, encode_snapshot, merge_fleet,
                              new_node_id)
from actors.backplane_redis import RedisBackplane
from actors.gateway import GatewayActor
from actors.registry import GatewayRegistry
from actors.rates import Gcra, TokenBucket
from config import ConfigError, load_settings
from store.pool import open_store
from tests.conftest import clean, sql

REDIS_URL = "redis://127.0.0.1:6379/0"


@attrs.define
class Member:
    """One node's backplane as a test drives it: its registry and the wake-ups it received."""

    backplane: object
    registry: GatewayRegistry
    wakes: list = attrs.Factory(list)

    def connect(self, gateway_id: int, *, subscribed: bool = True) -> GatewayActor:
        actor = live_actor(gateway_id)
        if subscribed:
            actor.identifier = "GatewayChannel"
        self.registry.attach(actor)
        return actor


def live_actor(gateway_id: int) -> GatewayActor:
    async def send_text(_: str) -> None:
        await trio.lowlevel.checkpoint()

    return GatewayActor(gateway_id=gateway_id, device_id=f"phone-{gateway_id}", send_text=send_text,
                        active=True, priority=1, bucket=TokenBucket.full(0, 0.0))


@pytest.fixture
async def prefix():
    name = f"test_{secrets.token_hex(4)}"
    yield name
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
        keys = [key async for key in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(keys)


@asynccontextmanager
async def member(kind: str, prefix: str, *, url: str = REDIS_URL, wait_up: bool = True, **options):
    registry = GatewayRegistry(default_rate_per_minute=0)
    wakes: list = []
    if kind == "local":
        backplane = LocalBackplane(registry=registry)
    else:
        backplane = RedisBackplane(url=url, prefix=prefix, node_id=new_node_id(), registry=registry,
                                   wake_local=lambda: wakes.append(trio.current_time()), **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(backplane.run)
        if kind == "redis" and wait_up:
            await until(lambda: backplane.up)
        yield Member(backplane, registry, wakes)
        nursery.cancel_scope.cancel()


async def settled(*members: Member) -> None:
    """Forget the wake-ups each node sends and gets as it comes up."""
    await trio.sleep(0.1)
    for m in members:
        m.wakes.clear()


async def until(predicate, timeout: float = 3.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# --- the same behaviour from both implementations -------------------------------------------

@pytest.fixture(params=["local", "redis"])
def kind(request) -> str:
    return request.param


async def test_presence_names_the_node_and_connection_holding_a_gateway(kind, prefix):
    async with member(kind, prefix) as node:
        actor = node.connect(7)
        await node.backplane.gateway_attached(7, actor.lease)
        assert await node.backplane.holder(7) == Presence(node.backplane.node_id, actor.lease)
        node.registry.detach(actor)
        assert await node.backplane.gateway_left(7, actor.lease) is True
        assert await node.backplane.holder(7) is None


async def test_an_older_connection_leaving_does_not_take_the_gateway_offline(kind, prefix):
    async with member(kind, prefix) as node:
        older = node.connect(7)
        await node.backplane.gateway_attached(7, older.lease)
        newer = node.connect(7)
        await node.backplane.gateway_attached(7, newer.lease)
        assert older.close_reason == "replaced"
        assert await node.backplane.gateway_left(7, older.lease) is False
        assert await node.backplane.holder(7) == Presence(node.backplane.node_id, newer.lease)


async def test_rate_limit_allows_a_burst_then_answers_retry_after_then_refills(kind, prefix):
    gcra = Gcra(limit=5, period=1.0)  # one request every 0.2 s after a burst of 5
    async with member(kind, prefix) as node:
        burst = [await node.backplane.check_rate(gcra, "key:1") for _ in range(5)]
        assert [d.allowed for d in burst] == [True] * 5
        assert [d.remaining for d in burst] == [4, 3, 2, 1, 0]
        denied = await node.backplane.check_rate(gcra, "key:1")
        assert not denied.allowed and 0.1 < denied.retry_after <= 0.2
        assert (await node.backplane.check_rate(gcra, "key:2")).allowed  # another key has its own count
        await trio.sleep(denied.retry_after + 0.02)
        assert (await node.backplane.check_rate(gcra, "key:1")).allowed


async def test_unlimited_rate_always_allows(kind, prefix):
    async with member(kind, prefix) as node:
        decisions = [await node.backplane.check_rate(Gcra(limit=0, period=60.0), "ip:1") for _ in range(50)]
        assert all(d.allowed for d in decisions)


async def test_snapshots_show_live_health_of_connected_gateways(kind, prefix):
    async with member(kind, prefix) as node:
        actor = node.connect(3)
        actor.record_heartbeat(81, 4, 2)
        await node.backplane.gateway_attached(3, actor.lease)
        fleet = await node.backplane.fleet_snapshots()
        assert fleet[3]["online"] and fleet[3]["battery_level"] == 81 and fleet[3]["queue_depth"] == 2


# --- several nodes on one Redis -------------------------------------------------------------

async def test_wake_published_on_one_node_wakes_the_others_not_itself(prefix):
    async with member("redis", prefix) as a, member("redis", prefix) as b, member("redis", prefix) as c:
        await settled(a, b, c)
        a.backplane.publish_wake()
        await until(lambda: b.wakes and c.wakes)
        await trio.sleep(0.1)
        assert a.wakes == [] and len(b.wakes) == 1 and len(c.wakes) == 1


async def test_a_burst_of_wakes_is_coalesced(prefix):
    async with member("redis", prefix) as a, member("redis", prefix) as b:
        await settled(a, b)
        for _ in range(200):  # one burst, with no time passing between the calls
            a.backplane.publish_wake()
        await until(lambda: b.wakes)
        await trio.sleep(0.1)
        assert 1 <= len(b.wakes) <= 2


async def test_a_newer_socket_on_another_node_closes_the_older_one(prefix):
    async with member("redis", prefix) as a, member("redis", prefix) as b:
        older = a.connect(5)
        await a.backplane.gateway_attached(5, older.lease)
        newer = b.connect(5)
        await b.backplane.gateway_attached(5, newer.lease)
        await until(lambda: older.close_reason == "replaced")
        assert newer.close_reason is None
        assert await a.backplane.holder(5) == Presence(b.backplane.node_id, newer.lease)
        a.registry.detach(older)
        assert await a.backplane.gateway_left(5, older.lease) is False  # B holds it: not offline


async def test_a_late_announcement_never_closes_a_socket_that_subscribed_after_it(prefix):
    async with member("redis", prefix) as a, member("redis", prefix) as b:
        newer = b.connect(5)
        await b.backplane.gateway_attached(5, newer.lease)
        async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
            await client.publish(f"{prefix}:replace", json.dumps({"g": 5, "l": "conn_older", "n": "node_a"}))
        opening = b.connect(6, subscribed=False)  # not announced yet: it wins by announcing
        older = a.connect(6)
        await a.backplane.gateway_attached(6, older.lease)
        await trio.sleep(0.3)
        assert newer.close_reason is None and opening.close_reason is None


async def test_presence_is_refreshed_while_connected_and_expires_after(prefix):
    async with member("redis", prefix, presence_ttl=0.5, refresh_interval=0.15) as node:
        actor = node.connect(9)
        await node.backplane.gateway_attached(9, actor.lease)
        await trio.sleep(1.2)
        assert (await node.backplane.holder(9)).lease == actor.lease
        node.registry.detach(actor)  # a dead node refreshes nothing either
        await trio.sleep(0.8)
        assert await node.backplane.holder(9) is None


async def test_refresh_closes_a_connection_another_node_took_while_a_publish_was_lost(prefix):
    async with member("redis", prefix, refresh_interval=0.1) as node:
        actor = node.connect(4)
        await node.backplane.gateway_attached(4, actor.lease)
        async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
            await client.set(f"{prefix}:presence:4", "conn_elsewhere node_other", px=5000)
        await until(lambda: actor.close_reason == "replaced")


async def test_snapshots_of_every_node_are_read_on_any_node(prefix):
    async with member("redis", prefix, snapshot_interval=0.2) as a, member("redis", prefix) as b:
        actor = a.connect(11)
        actor.record_heartbeat(55, 3, 0)
        await a.backplane.gateway_attached(11, actor.lease)
        b.connect(12, subscribed=False)

        async def fleet_has_both():
            fleet = await b.backplane.fleet_snapshots()
            return fleet if 11 in fleet and 12 in fleet else None

        with trio.fail_after(3):
            while not (fleet := await fleet_has_both()):
                await trio.sleep(0.05)
        assert fleet[11]["online"] and fleet[11]["battery_level"] == 55
        assert isinstance(fleet[11]["last_heartbeat_at"], datetime)
        assert fleet[12]["online"] is False
        a.registry.detach(actor)
        await a.backplane.gateway_left(11, actor.lease)
        with trio.fail_after(3):
            while 11 in await b.backplane.fleet_snapshots():
                await trio.sleep(0.05)


async def test_rate_limit_counts_across_nodes(prefix):
    gcra = Gcra(limit=3, period=60.0)
    async with member("redis", prefix) as a, member("redis", prefix) as b:
        answers = [await node.backplane.check_rate(gcra, "key:9") for node in (a, a, b, b)]
        assert [d.allowed for d in answers] == [True, True, True, False]
        assert 19.0 < answers[-1].retry_after <= 20.0


async def test_an_operators_change_reaches_the_node_holding_the_gateway(prefix):
    async with member("redis", prefix) as a, member("redis", prefix) as b:
        actor = b.connect(8)
        await a.backplane.gateway_changed({"id": 8, "active": False, "priority": 3, "send_rate_per_minute": 12})
        await until(lambda: not actor.active)
        assert actor.priority == 3 and actor.bucket.rate_per_minute == 12
        await a.backplane.key_rotated(8)
        await until(lambda: actor.close_reason == "key_rotated")


@pytest.mark.parametrize("tat, now, limit, period", [
    (None, 1000.0, 5, 60.0),
    (None, 1000.0, 1, 1.0),
    (1000.0, 1000.0, 5, 60.0),
    (1012.0, 1000.0, 5, 60.0),
    (1047.9, 1000.0, 5, 60.0),
    (1048.0, 1000.0, 5, 60.0),      # exactly at the edge: allowed
    (1048.0000001, 1000.0, 5, 60.0),
    (1060.0, 1000.0, 5, 60.0),      # the burst is spent
    (1100.0, 1000.0, 5, 60.0),
    (900.0, 1000.0, 5, 60.0),       # a TAT in the past counts from now
    (1795729621.123456, 1795729621.0, 600, 60.0),
    (1795729621.5, 1795729600.25, 3, 60.0),
    (1.7e9 + 0.1, 1.7e9, 1000, 1.0),
])
async def test_lua_gcra_decides_like_gcra_decide(prefix, tat, now, limit, period):
    expected, expected_tat = Gcra.decide(tat, now, limit, period)
    key = f"{prefix}:rate:table"
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
        if tat is not None:
            await client.set(key, repr(tat))
        allowed, remaining, reset_after, retry_after = await client.eval(
            GCRA_LUA, keys=[key], args=[limit, period, repr(now)])
        stored = await client.get(key)
    assert bool(allowed) == expected.allowed and remaining == expected.remaining
    assert float(reset_after) == pytest.approx(expected.reset_after, abs=1e-6)
    assert float(retry_after) == pytest.approx(expected.retry_after, abs=1e-6)
    if expected.allowed:
        assert float(stored) == pytest.approx(expected_tat, abs=1e-6)
    else:
        assert stored == (repr(tat) if tat is not None else None)  # a denial writes nothing


# --- Redis down -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_redis_down_serves_alone_logs_once_and_recovers(prefix, caplog):
    caplog.set_level(logging.INFO, logger="smsgw.backplane")
    port = free_port()
    gcra = Gcra(limit=2, period=60.0)
    async with member("redis", prefix, url=f"redis://127.0.0.1:{port}/0", wait_up=False) as node:
        actor = node.connect(1)
        await node.backplane.gateway_attached(1, actor.lease)       # skipped, no error
        answers = [await node.backplane.check_rate(gcra, "key:1") for _ in range(3)]
        assert [d.allowed for d in answers] == [True, True, False]  # the local GCRA
        assert (await node.backplane.fleet_snapshots())[1]["online"]
        assert await node.backplane.gateway_left(2, "conn_x") is True
        await trio.sleep(1.5)                                        # several reconnect attempts
        assert _count(caplog, "redis unreachable") == 1
        server = start_redis(port)
        try:
            await until(lambda: node.backplane.up, timeout=10)
            assert _count(caplog, "redis reachable again") == 1
            assert await node.backplane.holder(1) == Presence(node.backplane.node_id, actor.lease)  # re-announced
            server.kill()
            server.wait()
            await until(lambda: not node.backplane.up or _count(caplog, "redis unreachable") == 2, timeout=20)
            await trio.sleep(1.0)
            assert (await node.backplane.check_rate(gcra, "key:1")).allowed is False
            assert _count(caplog, "redis unreachable") == 2  # once per outage
        finally:
            server.kill()
            server.wait()


def _count(caplog, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


# --- the sweep: connections no node holds any more ------------------------------------------

async def test_sweep_requeues_what_a_vanished_connection_held_and_marks_its_phone_offline(database_url, prefix):
    clean(database_url)
    dead = sql(database_url, "INSERT INTO gateways (device_id, name, status, last_heartbeat_at) VALUES"
                             " ('dead', 'Dead', 'online', now() - interval '1 minute') RETURNING id")[0]["id"]
    alive = sql(database_url, "INSERT INTO gateways (device_id, name, status, last_heartbeat_at) VALUES"
                              " ('alive', 'Alive', 'online', now() - interval '1 minute') RETURNING id")[0]["id"]
    for gateway_id, lease in ((dead, "conn_dead"), (alive, "conn_alive"), (alive, "conn_alive_old")):
        sql(database_url, "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id,"
                          " lease, dispatched_at) VALUES (%s, 'outbound', 'dispatched', '+14155552671', 'hi', %s,"
                          " %s, now())", (f"msg_{lease}", gateway_id, lease))
    async with open_store(database_url, size=2) as store:
        async with member("redis", prefix, store=store, presence_ttl=30) as a, member("redis", prefix) as b:
            await b.backplane.gateway_attached(alive, "conn_alive")  # held by node B
            requeued, offline = await a.backplane.sweep()
    assert requeued == 2 and [g["device_id"] for g in offline] == ["dead"]
    rows = {r["message_id"]: r["status"] for r in sql(database_url, "SELECT message_id, status FROM messages")}
    assert rows == {"msg_conn_dead": "queued", "msg_conn_alive": "dispatched", "msg_conn_alive_old": "queued"}
    status = {r["device_id"]: r["status"] for r in sql(database_url, "SELECT device_id, status FROM gateways")}
    assert status == {"dead": "offline", "alive": "online"}
    assert a.wakes  # the requeued messages get a dispatch round


# --- the pure helpers -----------------------------------------------------------------------

def test_snapshot_round_trips_through_json():
    beat = datetime(2026, 5, 1, 12, 30, 5, tzinfo=timezone.utc)
    snapshot = {"online": True, "connected": True, "in_flight": 2, "queue_depth": 1, "battery_level": 40,
                "signal_strength": None, "last_heartbeat_at": beat}
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    assert decode_snapshot(encode_snapshot({**snapshot, "last_heartbeat_at": None}))["last_heartbeat_at"] is None


@pytest.mark.parametrize("local, remote, expected", [
    ({}, [], {}),
    ({1: {"online": True, "n": "here"}}, [{1: {"online": True, "n": "there"}}], {1: "here"}),
    ({1: {"online": False, "n": "here"}}, [{1: {"online": True, "n": "there"}}], {1: "there"}),
    ({}, [{1: {"online": False, "n": "b"}}, {1: {"online": True, "n": "c"}}], {1: "c"}),
    ({}, [{1: {"online": True, "n": "b"}}, {1: {"online": False, "n": "c"}}], {1: "b"}),
    ({2: {"online": False, "n": "here"}}, [{1: {"online": True, "n": "b"}}], {1: "b", 2: "here"}),
])
def test_merge_fleet_prefers_this_node_then_an_online_socket(local, remote, expected):
    assert {g: s["n"] for g, s in merge_fleet(local, remote).items()} == expected


# --- settings -------------------------------------------------------------------------------

def test_redis_prefix_and_node_id_default_and_override():
    assert (load_settings({}).redis_prefix, load_settings({}).node_id) == ("smsgw", None)
    settings = load_settings({"REDIS_PREFIX": "eu-1", "NODE_ID": "web.3"})
    assert (settings.redis_prefix, settings.node_id) == ("eu-1", "web.3")


@pytest.mark.parametrize("variable, value", [
    ("REDIS_PREFIX", "has space"), ("REDIS_PREFIX", "a:b"), ("REDIS_PREFIX", "x" * 65),
    ("NODE_ID", "node*1"), ("NODE_ID", "é"),
])
def test_bad_redis_prefix_or_node_id_names_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.variable == variable
