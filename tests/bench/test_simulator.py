"""The simulated phones against a real node: deliveries, spread, failover, and the pure parts."""

import argparse
import functools
import hashlib
import json
import socket

import pytest
import trio

from bench.simulator import FleetStats, classify, identifier_for, latencies, percentile, run_cli, run_fleet
from tests.conftest import wait_for


async def _fleet(url: str, gateways: int, *, task_status=trio.TASK_STATUS_IGNORED, **options) -> None:
    """Run a fleet; hand its own cancel scope out once every phone is subscribed."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_fleet, url, gateways, **options))
            task_status.started(scope)


async def _send_all(server, key: str, count: int) -> list[str]:
    ids: list[str] = []

    async def one(i: int) -> None:
        ids.append((await server.send(key, message=f"fleet message {i}"))["message_id"])

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return ids


async def test_fleet_delivers_every_message_over_several_phones(server, tmp_path):
    key = server.client_key("sms")
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(_fleet, server.url, 3, delivery_ms=100, prefix="t-fleet",
                                              keys_path=tmp_path / "keys.json", stats=stats))
        assert stats.online == 3
        ids = await _send_all(server, key, 10)
        await wait_for(lambda: server.sql(
            "SELECT count(*) AS n FROM messages WHERE message_id = ANY(%s) AND status = 'delivered'",
            (ids,))[0]["n"] == 10, timeout=15)
        nursery.cancel_scope.cancel()
    rows = server.sql("SELECT DISTINCT g.device_id FROM messages m JOIN gateways g ON g.id = m.gateway_id"
                      " WHERE m.message_id = ANY(%s)", (ids,))
    assert len(rows) > 1
    assert {r["device_id"] for r in rows} <= {"t-fleet-0000", "t-fleet-0001", "t-fleet-0002"}
    assert set(stats.delivered) == set(ids)
    assert all(stats.delivered[m] >= stats.arrived[m] for m in ids)


async def test_message_held_by_a_killed_phone_is_delivered_by_another(server, tmp_path):
    key = server.client_key("sms")
    keys_path = tmp_path / "keys.json"
    slow, fast = FleetStats(), FleetStats()
    async with trio.open_nursery() as nursery:
        # The only phone online holds every message for a minute before reporting.
        slow_fleet = await nursery.start(functools.partial(_fleet, server.url, 1, delivery_ms=60_000, prefix="t-slow",
                                                           keys_path=keys_path, stats=slow))
        sent = await server.send(key, message="failover please")
        await wait_for(lambda: sent["message_id"] in slow.arrived, timeout=5)
        await nursery.start(functools.partial(_fleet, server.url, 1, delivery_ms=0, prefix="t-fast",
                                              keys_path=keys_path, stats=fast))
        slow_fleet.cancel()  # killed after it received the message, before it reported anything
        await wait_for(lambda: server.sql(
            "SELECT 1 FROM messages WHERE message_id = %s AND status = 'delivered'", (sent["message_id"],)),
            timeout=10)
        nursery.cancel_scope.cancel()
    row = server.sql("SELECT g.device_id, m.attempts FROM messages m JOIN gateways g ON g.id = m.gateway_id"
                     " WHERE m.message_id = %s", (sent["message_id"],))[0]
    assert row["device_id"] == "t-fast-0000"
    assert row["attempts"] == 2
    assert sent["message_id"] not in slow.delivered
    assert fast.handled_by[sent["message_id"]] == "t-fast-0000"


async def test_reports_made_while_the_socket_is_down_are_sent_after_reconnecting(server, tmp_path, monkeypatch):
    monkeypatch.setattr("bench.simulator.RECONNECT_BASE", 1.5)  # offline 0.75 to 2.25 s
    key = server.client_key("sms")
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(_fleet, server.url, 1, delivery_ms=400, prefix="t-drop",
                                              keys_path=tmp_path / "keys.json", stats=stats))
        sent = await server.send(key, message="keep sending through the drop")
        await wait_for(lambda: sent["message_id"] in stats.arrived, timeout=5)
        gateway_id = server.sql("SELECT id FROM gateways WHERE device_id = 't-drop-0000'")[0]["id"]
        server.node.gateways.get(gateway_id).close("server_restart")  # disconnect, reconnect: true
        await wait_for(lambda: server.sql(
            "SELECT 1 FROM messages WHERE message_id = %s AND status = 'delivered'", (sent["message_id"],)),
            timeout=10)
        nursery.cancel_scope.cancel()
    assert stats.connects >= 2
    assert stats.held_reports == 2  # `sent` and `delivered`, made while offline, sent afterwards
    assert stats.handled_by[sent["message_id"]] == "t-drop-0000"


async def test_rerun_rotates_the_stored_keys_of_the_same_devices(server, tmp_path):
    keys_path = tmp_path / "keys.json"
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(_fleet, server.url, 2, prefix="t-rerun", keys_path=keys_path))
            nursery.cancel_scope.cancel()
    stored = json.loads(keys_path.read_text())["phones"]
    assert [stored[s]["device_id"] for s in sorted(stored)] == ["t-rerun-0000", "t-rerun-0001"]
    assert server.sql("SELECT count(*) AS n FROM gateways WHERE device_id LIKE 't-rerun%%'")[0]["n"] == 2


async def test_taken_device_id_without_a_stored_key_gets_a_new_suffix(server, tmp_path):
    await server.register("t-taken-0000")
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(_fleet, server.url, 1, prefix="t-taken",
                                              keys_path=tmp_path / "keys.json", stats=stats))
        assert stats.online == 1
        nursery.cancel_scope.cancel()
    stored = json.loads((tmp_path / "keys.json").read_text())["phones"]
    assert stored["t-taken-0000"]["device_id"].startswith("t-taken-0000-")


async def test_phone_obeys_disconnect_without_reconnect(server, tmp_path):
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(_fleet, server.url, 1, prefix="t-rotate",
                                              keys_path=tmp_path / "keys.json", stats=stats))
        # Rotating the key closes the socket with reconnect:false (the old key is dead).
        stored = json.loads((tmp_path / "keys.json").read_text())["phones"]["t-rotate-0000"]
        r = await server.http.post("/api/v1/gateway/register", json={"device_id": "t-rotate-0000", "name": "x"},
                                   headers={"Authorization": f"Bearer {stored['api_key']}"})
        assert r.status_code == 201
        await wait_for(lambda: stats.stopped == 1, timeout=5)
        assert stats.online == 0
        nursery.cancel_scope.cancel()


async def test_failed_delivery_is_reported_with_the_simulated_error(server, tmp_path):
    key = server.client_key("sms")
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(_fleet, server.url, 1, delivery_ms=0, fail_rate=1.0, prefix="t-fail",
                                              keys_path=tmp_path / "keys.json", stats=stats))
        sent = await server.send(key)
        rows = await wait_for(lambda: server.sql(
            "SELECT status, error_message FROM messages WHERE message_id = %s AND error_message IS NOT NULL",
            (sent["message_id"],)), timeout=5)
        nursery.cancel_scope.cancel()
    assert rows[0]["error_message"] == "simulated failure"
    assert rows[0]["status"] == "queued"  # the server retries it later, elsewhere if it can
    assert sent["message_id"] in stats.failed and sent["message_id"] not in stats.delivered


async def test_phones_report_inbound_sms_and_heartbeats(server, tmp_path):
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(_fleet, server.url, 2, inbound_every=0.2, heartbeat_every=0.2,
                                              prefix="t-inbound", keys_path=tmp_path / "keys.json", stats=stats))
        inbound = await wait_for(lambda: server.sql(
            "SELECT phone_number, body FROM messages WHERE direction = 'inbound'"), timeout=5)
        await wait_for(lambda: server.sql(
            "SELECT 1 FROM gateways WHERE device_id = 't-inbound-0000' AND battery_level IS NOT NULL"), timeout=5)
        nursery.cancel_scope.cancel()
    assert inbound[0]["phone_number"].startswith("+1415555")
    assert inbound[0]["body"].startswith("Hello from ")
    assert stats.inbound >= 1 and stats.heartbeats >= 1


def _cli_args(**overrides) -> argparse.Namespace:
    args = dict(gateways=1, url="http://127.0.0.1:3000", delivery_ms=200, fail_rate=0.0, inbound_every=0.0,
                prefix="t-cli")
    args.update(overrides)
    return argparse.Namespace(**args)


@pytest.mark.parametrize("bad", [{"gateways": 0}, {"delivery_ms": -1}, {"fail_rate": 1.5}, {"inbound_every": -2}])
def test_simulate_refuses_bad_options_with_exit_code_2(bad, capsys):
    assert run_cli(_cli_args(**bad)) == 2
    assert "--gateways >= 1" in capsys.readouterr().err


def test_simulate_exits_1_when_the_server_cannot_be_reached(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    assert run_cli(_cli_args(url=f"http://127.0.0.1:{port}", keys=str(tmp_path / "keys.json"))) == 1
    assert capsys.readouterr().err.startswith("smsgw simulate: ")


@pytest.mark.parametrize("text, kind, extra", [
    ('{"type":"welcome"}', "welcome", {}),
    ('{"type":"ping","message":1700000000}', "ping", {}),
    ('{"identifier":"i","type":"confirm_subscription"}', "confirm", {"identifier": "i"}),
    ('{"identifier":"i","type":"reject_subscription"}', "reject", {"identifier": "i"}),
    ('{"type":"disconnect","reason":"server_restart","reconnect":true}', "disconnect",
     {"reason": "server_restart", "reconnect": True}),
    ('{"type":"disconnect","reason":"unauthorized","reconnect":false}', "disconnect",
     {"reason": "unauthorized", "reconnect": False}),
    ('{"type":"disconnect","reason":"remote"}', "disconnect", {"reason": "remote", "reconnect": False}),
    ('{"identifier":"i","message":{"action":"send_sms","message_id":"msg_1","recipient":"+1","message":"hi"}}',
     "send_sms", {"identifier": "i"}),
    ('{"identifier":"i","message":{"action":"send_sms"}}', "other", {}),
    ('{"identifier":"i","message":{"action":"something_else"}}', "other", {}),
    ("not json", "other", {}),
    ("[1, 2]", "other", {}),
    (b"\xff\xfe", "other", {}),
    ('{"type":"confirm_subscription","identifier":7}', "confirm", {"identifier": ""}),
])
def test_classify_reads_each_server_frame(text, kind, extra):
    frame = classify(text)
    assert frame.kind == kind
    for field, value in extra.items():
        assert getattr(frame, field) == value


def test_identifier_is_compact_json_with_the_key_digest():
    ident = identifier_for("gw_live_abc")
    digest = hashlib.sha256(b"gw_live_abc").hexdigest()
    assert ident == '{"channel":"GatewayChannel","api_key_digest":"%s"}' % digest


@pytest.mark.parametrize("values, q, expected", [
    ([], 50, None),
    ([5.0], 50, 5.0),
    ([5.0], 99, 5.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([4.0, 3.0, 2.0, 1.0], 100, 4.0),
    (list(range(1, 101)), 99, 99),
    (list(range(1, 101)), 1, 1),
    (list(range(1, 1001)), 99, 990),
    ([3.0, 1.0], 0, 1.0),
])
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_latencies_pair_only_ids_seen_at_both_ends():
    assert sorted(latencies({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.5, "c": 4.0, "d": 9.0})) == [0.5, 1.0]


async def test_a_phone_whose_server_goes_silent_reconnects(monkeypatch):
    """No frame (not even a ping) for STALE_AFTER: the phone drops the socket and comes back,
    as the Action Cable client's connection monitor does."""
    import random

    from trio_websocket import serve_websocket

    from bench import simulator

    monkeypatch.setattr(simulator, "STALE_AFTER", 0.5)
    monkeypatch.setattr(simulator, "RECONNECT_BASE", 0.1)
    connections = []

    async def silent_server(request):
        ws = await request.accept(subprotocol="actioncable-v1-json")
        connections.append(trio.current_time())
        await ws.send_message('{"type":"welcome"}')
        subscribe = json.loads(await ws.get_message())
        await ws.send_message(json.dumps({"identifier": subscribe["identifier"], "type": "confirm_subscription"}))
        await trio.sleep_forever()  # then nothing at all

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, silent_server, "127.0.0.1", 0, None)
        port = server.port
        phone = simulator._Phone(
            device_id="silent-0000", key="gw_live_x", ws_url=f"ws://127.0.0.1:{port}/cable",
            behaviour=simulator._Behaviour(delivery_ms=0, fail_rate=0, inbound_every=0, heartbeat_every=60),
            stats=FleetStats(), rand=random.Random(1), connecting=trio.CapacityLimiter(1))
        nursery.start_soon(phone.run)
        with trio.fail_after(10):
            while len(connections) < 3:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(connections, connections[1:])]
    assert all(gap >= 0.5 for gap in gaps)  # each socket was kept until it went stale


async def test_send_frames_writes_several_messages_that_arrive_whole_and_in_order(nursery):
    from trio_websocket import open_websocket_url, serve_websocket

    from bench.simulator import send_frames

    got = []

    async def handler(request):
        ws = await request.accept()
        for _ in range(4):
            got.append(await ws.get_message())

    server = await nursery.start(functools.partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
    async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
        await send_frames(ws, ["one", "two", "drei ü"])
        await send_frames(ws, ["four"])
        await wait_for(lambda: len(got) == 4, timeout=5)
    assert got == ["one", "two", "drei ü", "four"]
