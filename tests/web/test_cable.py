"""`/cable` speaks Action Cable: welcome, pings, subscriptions, actions, bad frames, replacement."""

import json
import os

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.conftest import phone, wait_for
from web import cable_protocol as cable

NODE_DIR = os.path.join(os.path.dirname(__file__), "..", "node")


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def test_welcome_then_pings_every_three_seconds(server):
    key = await server.register("dev-1")
    async with open_websocket_url(f"{server.ws_url}?api_key={key}", subprotocols=[cable.SUBPROTOCOL]) as ws:
        assert ws.subprotocol == "actioncable-v1-json"
        assert json.loads(await ws.get_message()) == {"type": "welcome"}
        with trio.fail_after(4):
            ping = json.loads(await ws.get_message())
        assert ping["type"] == "ping" and isinstance(ping["message"], int)


async def test_permessage_deflate_is_declined_as_action_cable_does(server):
    """Browsers, `ws` and OkHttp offer compression; each socket that took it kept zlib state
    of its own (137 KB per idle phone instead of 40 KB) to compress frames of a few hundred
    bytes. Rails never negotiates it: neither does /cable."""
    key = await server.register("dev-1")
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"GET /cable?api_key={key} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: actioncable-v1-json\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode())
        head = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
    status, *headers = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    names = {line.partition(":")[0].strip().lower() for line in headers}
    assert status.startswith("HTTP/1.1 101")
    assert "sec-websocket-protocol" in names and "sec-websocket-extensions" not in names


@pytest.mark.parametrize("query", ["", "?api_key=gw_live_wrong", "?api_key=api_live_wrong"])
async def test_bad_key_gets_unauthorized_disconnect_without_reconnect(server, query):
    async with open_websocket_url(f"{server.ws_url}{query}", subprotocols=[cable.SUBPROTOCOL]) as ws:
        frame = json.loads(await ws.get_message())
        assert frame == {"type": "disconnect", "reason": "unauthorized", "reconnect": False}


async def test_client_key_is_refused_on_the_cable(server):
    client = server.client_key("sms")
    async with open_websocket_url(f"{server.ws_url}?api_key={client}", subprotocols=[cable.SUBPROTOCOL]) as ws:
        assert json.loads(await ws.get_message())["reason"] == "unauthorized"


async def test_authorization_header_works_too(server):
    key = await server.register("dev-1")
    async with open_websocket_url(server.ws_url, subprotocols=[cable.SUBPROTOCOL],
                                  extra_headers=[(b"authorization", f"Bearer {key}".encode())]) as ws:
        assert json.loads(await ws.get_message()) == {"type": "welcome"}


async def test_subscription_with_wrong_digest_or_channel_is_rejected(server):
    key = await server.register("dev-1")
    async with phone(server, key, subscribe=False) as p:
        for params in ({"channel": "GatewayChannel", "api_key_digest": "0" * 64},
                       {"channel": "OtherChannel", "api_key_digest": cable.api_key_digest(key)}):
            identifier = json.dumps(params)
            await p.ws.send_message(json.dumps({"command": "subscribe", "identifier": identifier}))
            assert await p.next() == {"identifier": identifier, "type": "reject_subscription"}


async def test_identifier_is_echoed_byte_for_byte_and_resubscribe_confirms_again(server):
    key = await server.register("dev-1")
    async with phone(server, key, subscribe=False) as p:
        odd = '{ "api_key_digest" : "%s",  "channel":"GatewayChannel" }' % cable.api_key_digest(key)
        for _ in range(2):
            await p.ws.send_message(json.dumps({"command": "subscribe", "identifier": odd}))
            assert await p.next() == {"identifier": odd, "type": "confirm_subscription"}


async def test_bad_frames_never_close_the_connection(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        for garbage in ["not json", "[]", "{}", '{"command":"dance"}', '{"command":"message"}',
                        json.dumps({"command": "message", "identifier": "{}", "data": "{}"}),
                        json.dumps({"command": "message", "identifier": p.identifier, "data": "not json"}),
                        json.dumps({"command": "message", "identifier": p.identifier, "data": '{"no":"action"}'}),
                        json.dumps({"command": "message", "identifier": p.identifier, "data": '{"action":"fly"}'}),
                        json.dumps({"command": "message", "identifier": p.identifier,
                                    "data": '{"action":"heartbeat","battery_level":"full"}'}),
                        json.dumps({"command": "message", "identifier": p.identifier,
                                    "data": '{"action":"delivery_report","message_id":"msg_nope","status":"sent"}'}),
                        json.dumps({"command": "message", "identifier": p.identifier,
                                    "data": '{"action":"delivery_report","message_id":"msg_nope","status":"exploded"}'}),
                        json.dumps({"command": "message", "identifier": p.identifier,
                                    "data": '{"action":"delivery_report","status":"sent"}'}),
                        json.dumps({"command": "message", "identifier": p.identifier,
                                    "data": '{"action":"message_received","sender":"+14155552671"}'}),
                        "\x00" * 10]:
            await p.ws.send_message(garbage)
        await p.ws.send_message(b"\xff\xfe binary")
        sent = await server.send(client)
        assert (await p.next_sms())["message_id"] == sent["message_id"]  # still alive and served


async def test_actions_over_the_cable_have_the_rest_effects(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        await p.perform("heartbeat", battery_level=55, signal_strength=2, messages_in_queue=1)
        await p.perform("message_received", sender="+14155552671", message="Hello",
                        timestamp="2025-10-19T10:30:00Z")
        await p.perform("message_received", sender="+14155552671", message="Hello",
                        timestamp="2025-10-19T10:30:00Z")  # a resend after reconnect
        sent = await server.send(client)
        sms = await p.next_sms()
        await p.report(sms["message_id"], "failed", error_message="no signal")
        await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE battery_level = 55"))
        await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE direction = 'inbound'"))
    inbound = server.sql("SELECT phone_number, body, received_at FROM messages WHERE direction = 'inbound'")
    assert len(inbound) == 1 and inbound[0]["body"] == "Hello"
    assert sent["message_id"] == sms["message_id"]


async def test_newer_socket_replaces_the_older_and_nothing_is_lost(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as old:
        first = await server.send(client)
        assert (await old.next_sms())["message_id"] == first["message_id"]
        async with phone(server, key) as new:
            frame = await old.next()
            assert frame == {"type": "disconnect", "reason": "replaced", "reconnect": False}
            # the message the old socket held and never reported is sent again on the new one
            again = await new.next_sms()
            assert again["message_id"] == first["message_id"]
            await new.report(again["message_id"], "delivered")
            await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE status = 'delivered'"))


async def test_real_actioncable_client_connects_receives_and_reports(server):
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@rails", "actioncable")):
        pytest.fail("run `npm ci` in tests/node (make test does it)")
    client = server.client_key("sms")
    key = await server.register("dev-js")
    sent = await server.send(client, message="from rails client")
    env = {**os.environ, "CABLE_URL": f"{server.ws_url}?api_key={key}", "API_KEY": key,
           "EXPECT_MESSAGES": "1", "TIMEOUT_MS": "15000"}
    result = await trio.run_process(["node", "cable_client.mjs"], cwd=NODE_DIR, env=env,
                                    capture_stdout=True, capture_stderr=True, check=False)
    events = [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]
    assert result.returncode == 0, (result.stdout, result.stderr)
    received = [e for e in events if e["event"] == "received"]
    assert received[0]["message"]["action"] == "send_sms"
    assert received[0]["message"]["message_id"] == sent["message_id"]
    assert received[0]["message"]["message"] == "from rails client"
    await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE message_id = %s AND status = 'delivered'",
                                      (sent["message_id"],)))


async def test_real_actioncable_client_stops_on_unauthorized(server):
    env = {**os.environ, "CABLE_URL": f"{server.ws_url}?api_key=gw_live_bogus", "API_KEY": "gw_live_bogus",
           "TIMEOUT_MS": "8000"}
    result = await trio.run_process(["node", "cable_client.mjs"], cwd=NODE_DIR, env=env,
                                    capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 4, result.stdout  # disconnected for good, no retry loop


async def test_report_sent_just_before_closing_is_not_undone(server):
    client = server.client_key("sms")
    k1, k2 = await server.register("dev-1"), await server.register("dev-2")
    async with phone(server, k2) as other:
        async with phone(server, k1) as p:
            server.node.gateways.get(2).active = False  # keep the other phone out of the first try
            sent = await server.send(client)
            sms = await p.next_sms()
            await p.report(sms["message_id"], "delivered")
        # closed right after reporting: the report wins, nothing is sent again
        server.node.gateways.get(2).active = True
        server.node.dispatcher.wake()
        with trio.move_on_after(1.5):
            again = await other.next_sms()
            raise AssertionError(f"resent after a delivered report: {again}")
    await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE message_id = %s AND status = 'delivered'",
                                      (sent["message_id"],)))


async def test_a_burst_of_reports_is_written_in_a_few_group_commits_in_order(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        sent = [await server.send(client, message=f"m{i}") for i in range(20)]
        ids = [(await p.next_sms())["message_id"] for _ in sent]
        assert sorted(ids) == sorted(s["message_id"] for s in sent)
        before = server.node.dispatcher.reports.batches
        for message_id in ids:  # 40 frames without waiting: the phone does not wait either
            await p.report(message_id, "sent")
            await p.report(message_id, "delivered")
        await p.report(ids[0], "sent")  # a late repeat changes nothing
        await wait_for(lambda: len(server.sql("SELECT 1 FROM messages WHERE status = 'delivered'")) == 20)
        await wait_for(lambda: not server.node.gateways.get(1).in_flight)
    # One socket's reports used to cost a commit each; now what gathered is written together.
    assert server.node.dispatcher.reports.batches - before < 20
    rows = server.sql("SELECT status, sent_at <= delivered_at AS ordered FROM messages")
    assert all(r["status"] == "delivered" and r["ordered"] for r in rows)
    counters = server.sql("SELECT messages_sent_today FROM gateways")
    assert counters[0]["messages_sent_today"] == 20


async def test_frames_handed_over_together_arrive_whole_and_in_order(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        # The phone's frames are written with one socket write when they gather (Hypercorn's
        # stream under Quart's websocket); a change of either library would show here.
        assert server.node.gateways.get(1).send_texts is not None
        r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(client), json={
            "to": [f"+1415555{i:04d}" for i in range(150)], "message": "together ✓"})
        assert r.status_code == 202
        accepted = [e["message_id"] for e in r.json()["results"]]
        got = [await p.next_sms() for _ in accepted]
    assert [m["message_id"] for m in got] == accepted  # one round, in queue order
    assert {m["message"] for m in got} == {"together ✓"}
    assert [m["recipient"] for m in got] == [f"+1415555{i:04d}" for i in range(150)]


async def test_the_server_closes_normally_and_a_dropped_phone_leaves_cleanly(server):
    from trio_websocket import ConnectionClosed

    async with open_websocket_url(f"{server.ws_url}?api_key=gw_live_wrong", subprotocols=[cable.SUBPROTOCOL]) as ws:
        assert json.loads(await ws.get_message())["reason"] == "unauthorized"
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        assert ws.closed.code == 1000  # a normal close, not Hypercorn's 1011 for an app that just returned
    key = await server.register("dev-1")
    async with phone(server, key):
        await wait_for(lambda: server.node.gateways.get(1) is not None)
    # The phone closed its side: the connection ends, the gateway goes offline, nothing is held.
    await wait_for(lambda: server.node.gateways.get(1) is None)
    await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE id = 1 AND status = 'offline'"))
    # Plain HTTP on the WebSocket path is not an API route.
    r = await server.http.get("/cable")
    assert r.status_code == 404 and "error" in r.json()
