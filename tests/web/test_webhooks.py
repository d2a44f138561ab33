"""Webhooks end to end: deliveries posted to a real HTTP receiver (tests/web/webhook_receiver.py)
by a real node on the real PostgreSQL: payloads, signatures, retries, restarts, the listener."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import trio

from actors.webhooks import sign
from store import outbox
from store.outbox import EVENTS
from tests.conftest import clean, phone, running_node, wait_for
from tests.web.webhook_receiver import (SECRET, attempts_reach, auth, create_hook, delivery, parse_iso, ping, receiving, shift_clock)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
README = Path(__file__).resolve().parents[2] / "README.md"


async def test_inbound_sms_is_posted_signed_with_the_seed_fields(server):
    key = server.client_key("sms")
    gw_key = await server.register("inbound-phone")
    async with receiving() as receiver:
        hook = await create_hook(server, key, receiver.url, ["sms_received"], secret_key=SECRET)
        r = await server.http.post("/api/v1/gateway/sms/received", headers=auth(gw_key), json={
            "sender": "+14155552671", "message": "Hello, caf\u00e9", "timestamp": "2025-10-19T10:30:00Z"})
        assert r.status_code == 200, r.text
        got = await receiver.nth(1)
    body = got.json
    assert got.method == "POST" and got.target == "/hook"
    assert {k: body[k] for k in ("event", "message_id", "from", "message", "received_at", "gateway_id")} == {
        "event": "sms_received", "message_id": r.json()["message_id"], "from": "+14155552671",
        "message": "Hello, caf\u00e9", "received_at": "2025-10-19T10:30:00Z", "gateway_id": "inbound-phone"}
    assert body["event_id"].startswith("evt_") and parse_iso(body["timestamp"])
    headers = got.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "smsgw-webhooks/1"
    assert headers["x-webhook-id"] == body["event_id"]
    assert headers["x-webhook-event"] == "sms_received"
    assert abs(int(headers["x-webhook-timestamp"]) - time.time()) < 60
    assert headers["x-webhook-signature"] == sign(SECRET, got.body)
    await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE status = 'delivered'"))
    row = (await server.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=auth(key))).json()
    [seen] = row["deliveries"]
    assert (seen["status"], seen["attempts"], seen["last_status_code"], seen["last_error"]) == ("delivered", 1, 200, None)
    assert seen["event_id"] == body["event_id"] and seen["next_attempt_at"] is None and seen["delivered_at"]


@pytest.mark.parametrize("document", [README, DOCS], ids=["README", "docs"])
async def test_docs_snippet_verifies_a_received_call(server, document):
    code = re.search(r"```python\n(.*?)```", document.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(document), "exec"), namespace)
    verify = namespace["verify_webhook"]
    key = server.client_key("sms")
    async with receiving() as receiver:
        hook = await create_hook(server, key, receiver.url, secret_key=SECRET)
        await ping(server, key, hook["id"])
        got = await receiver.nth(1)
    signature = got.headers["x-webhook-signature"]
    assert verify(SECRET, got.body, signature) is True
    assert verify(SECRET, got.body + b" ", signature) is False
    assert verify("another-secret-0123", got.body, signature) is False
    assert verify(SECRET, got.body, None) is False


async def test_unsigned_webhook_gets_no_signature_header(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        hook = await create_hook(server, key, receiver.url)
        await ping(server, key, hook["id"])
        got = await receiver.nth(1)
    assert "x-webhook-signature" not in got.headers


async def test_ping_goes_to_that_webhook_only(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        hook = await create_hook(server, key, receiver.url, secret_key=SECRET)
        other = await create_hook(server, key, receiver.url.replace("/hook", "/other"))
        queued = await ping(server, key, hook["id"])
        assert (queued["event"], queued["status"], queued["attempts"]) == ("ping", "pending", 0)
        got = await receiver.nth(1)
        await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE status = 'delivered'"))
    assert got.json == {"event": "ping", "event_id": queued["event_id"], "timestamp": got.json["timestamp"],
                        "webhook_id": hook["id"]}
    assert got.headers["x-webhook-event"] == "ping" and got.target == "/hook"
    assert len(receiver.requests) == 1
    assert server.sql("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = %s", (other["id"],))[0]["n"] == 0


async def test_outbound_and_gateway_events_carry_their_fields(database_url):
    clean(database_url)
    async with running_node(database_url, SMS_MAX_ATTEMPTS="1") as server, receiving() as receiver:
        key = server.client_key("sms")
        await create_hook(server, key, receiver.url, list(EVENTS), secret_key=SECRET)
        gw_key = await server.register("events-phone", name="Events Phone")
        async with phone(server, gw_key) as p:
            online = await receiver.event("gateway_online")
            ok = await server.send(key, message="hello", reference="order-7")
            sms = await p.next_sms()
            await p.report(sms["message_id"], "sent")
            sent = await receiver.event("sms_sent", message_id=ok["message_id"])
            await p.report(sms["message_id"], "delivered")
            delivered = await receiver.event("sms_delivered", message_id=ok["message_id"])
            bad = await server.send(key, message="will fail")
            sms = await p.next_sms()
            await p.report(sms["message_id"], "failed", error_message="no signal")
            failed = await receiver.event("sms_failed", message_id=bad["message_id"])
        offline = await receiver.event("gateway_offline")
    for got in (online, offline):
        assert {k: got.json[k] for k in ("gateway_id", "name", "status")} == {
            "gateway_id": "events-phone", "name": "Events Phone", "status": got.json["event"].split("_")[1]}
    assert sent.json["to"] == "+14155552671" and sent.json["status"] == "sent"
    assert sent.json["reference"] == "order-7" and parse_iso(sent.json["sent_at"])
    assert sent.json["gateway_id"] == "events-phone"
    assert delivered.json["status"] == "delivered" and parse_iso(delivered.json["delivered_at"])
    assert failed.json["status"] == "failed" and failed.json["error_message"] == "no signal"
    assert parse_iso(failed.json["failed_at"]) and failed.json["reference"] is None
    for got in (online, sent, delivered, failed, offline):
        assert set(got.json) >= {"event", "event_id", "timestamp"}
        assert got.headers["x-webhook-event"] == got.json["event"]
        assert got.headers["x-webhook-signature"] == sign(SECRET, got.body)
    assert len({r.json["event_id"] for r in receiver.requests}) == len(receiver.requests)


async def test_delivery_answered_500_is_retried_after_backoff_then_redelivered(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        receiver.status = 500
        hook = await create_hook(server, key, receiver.url, secret_key=SECRET)
        queued = await ping(server, key, hook["id"])
        first = await receiver.nth(1)
        await wait_for(attempts_reach(server, queued["id"], 1))
        seen = await delivery(server, key, hook["id"], queued["id"])
        assert (seen["status"], seen["attempts"], seen["last_status_code"], seen["last_error"]) == \
            ("pending", 1, 500, "HTTP 500")
        wait = (parse_iso(seen["next_attempt_at"]) - datetime.now(timezone.utc)).total_seconds()
        assert 7 < wait <= 11.5, wait  # 10 s, jittered by up to 10 %
        r = await server.http.post(f"/api/v1/webhooks/deliveries/{queued['id']}/redeliver", headers=auth(key))
        assert r.status_code == 409 and "pending" in r.json()["error"]

        receiver.status = 200
        shift_clock(server, 15)
        second = await receiver.nth(2)
        assert second.headers["x-webhook-id"] == first.headers["x-webhook-id"] and second.body == first.body
        await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE id = %s AND status = 'delivered'",
                                          (queued["id"],)))
        seen = await delivery(server, key, hook["id"], queued["id"])
        assert (seen["status"], seen["attempts"], seen["last_status_code"], seen["last_error"]) == \
            ("delivered", 2, 200, None)

        r = await server.http.post(f"/api/v1/webhooks/deliveries/{queued['id']}/redeliver", headers=auth(key))
        assert r.status_code == 202, r.text
        again = r.json()["delivery"]
        assert again["id"] != queued["id"] and again["event_id"] == queued["event_id"]
        assert again["status"] == "pending" and again["attempts"] == 0
        third = await receiver.nth(3)
        assert third.body == first.body and third.headers["x-webhook-id"] == queued["event_id"]
    r = await server.http.post("/api/v1/webhooks/deliveries/999999/redeliver", headers=auth(key))
    assert r.status_code == 404 and r.json() == {"error": "Delivery not found"}


async def test_timeout_counts_as_a_failed_attempt_and_is_retried(database_url):
    clean(database_url)
    async with running_node(database_url, WEBHOOK_TIMEOUT_SECONDS="1") as server, receiving() as receiver:
        key = server.client_key("sms")
        receiver.hang = True
        hook = await create_hook(server, key, receiver.url)
        queued = await ping(server, key, hook["id"])
        await receiver.nth(1)
        await wait_for(attempts_reach(server, queued["id"], 1), timeout=5)
        seen = await delivery(server, key, hook["id"], queued["id"])
        assert (seen["status"], seen["last_status_code"], seen["last_error"]) == ("pending", None, "timeout after 1 s")
        receiver.hang = False
        shift_clock(server, 15)
        await receiver.nth(2)
        await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE id = %s AND status = 'delivered'",
                                          (queued["id"],)))


async def test_connection_refused_is_recorded_and_retried(server):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "http://127.0.0.1:9/closed")
    queued = await ping(server, key, hook["id"])
    await wait_for(attempts_reach(server, queued["id"], 1))
    seen = await delivery(server, key, hook["id"], queued["id"])
    assert seen["status"] == "pending" and seen["last_status_code"] is None
    assert seen["last_error"].startswith("ConnectError")


async def test_redirect_is_not_followed_and_counts_as_a_failed_attempt(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        receiver.status = 302
        hook = await create_hook(server, key, receiver.url)
        queued = await ping(server, key, hook["id"])
        await wait_for(attempts_reach(server, queued["id"], 1))
        seen = await delivery(server, key, hook["id"], queued["id"])
    assert (seen["status"], seen["last_status_code"]) == ("pending", 302)
    assert seen["last_error"] == "HTTP 302 (redirects are not followed)"
    assert len(receiver.requests) == 1


async def test_delivery_is_dead_after_the_last_retry(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        receiver.status = 503
        hook = await create_hook(server, key, receiver.url)
        queued = await ping(server, key, hook["id"])
        for attempt in range(1, 9):
            await wait_for(attempts_reach(server, queued["id"], attempt))
            shift_clock(server, attempt * 86_400)  # past even the 12 h retry
        await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE id = %s AND status = 'dead'",
                                          (queued["id"],)))
        seen = await delivery(server, key, hook["id"], queued["id"])
        assert (seen["status"], seen["attempts"], seen["last_status_code"], seen["last_error"]) == \
            ("dead", 8, 503, "HTTP 503")
        assert seen["next_attempt_at"] is None and seen["delivered_at"] is None
        shift_clock(server, 30 * 86_400)
        await trio.sleep(0.3)
        assert len(receiver.requests) == 8

        receiver.status = 204
        r = await server.http.post(f"/api/v1/webhooks/deliveries/{queued['id']}/redeliver", headers=auth(key))
        assert r.status_code == 202, r.text
        await receiver.nth(9)
        await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE id = %s AND status = 'delivered'",
                                          (r.json()["delivery"]["id"],)))
        assert (await delivery(server, key, hook["id"], queued["id"]))["status"] == "dead"


async def test_pending_delivery_goes_out_after_a_restart(database_url):
    clean(database_url)
    async with receiving() as receiver:
        receiver.status = 500
        async with running_node(database_url) as first_node:
            key = first_node.client_key("sms")
            hook = await create_hook(first_node, key, receiver.url, secret_key=SECRET)
            queued = await ping(first_node, key, hook["id"])
            await wait_for(attempts_reach(first_node, queued["id"], 1))
        receiver.status = 200
        async with running_node(database_url) as second_node:
            shift_clock(second_node, 15)
            retried = await receiver.nth(2)
            assert retried.headers["x-webhook-id"] == queued["event_id"]
            assert retried.headers["x-webhook-signature"] == sign(SECRET, retried.body)
            await wait_for(lambda: second_node.sql(
                "SELECT 1 FROM webhook_deliveries WHERE id = %s AND status = 'delivered' AND attempts = 2",
                (queued["id"],)))


async def test_disabled_webhook_gets_nothing(server):
    key = server.client_key("sms")
    gw_key = await server.register("quiet-phone")
    async with receiving() as receiver:
        disabled = await create_hook(server, key, receiver.url.replace("/hook", "/disabled"), active=False)
        enabled = await create_hook(server, key, receiver.url)
        r = await server.http.post("/api/v1/gateway/sms/received", headers=auth(gw_key),
                                   json={"sender": "+14155552671", "message": "hi"})
        assert r.status_code == 200
        await receiver.nth(1)
        r = await server.http.post(f"/api/v1/webhooks/{disabled['id']}/test", headers=auth(key))
        assert r.status_code == 409 and r.json() == {"error": "Webhook is disabled; enable it first"}
        await trio.sleep(0.3)
    assert [got.target for got in receiver.requests] == ["/hook"]
    listed = (await server.http.get(f"/api/v1/webhooks/{disabled['id']}/deliveries", headers=auth(key))).json()
    assert listed["total"] == 0
    assert enabled["active"] and not disabled["active"]


async def test_rows_of_a_webhook_disabled_later_are_marked_dead_unsent(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        receiver.status = 500
        hook = await create_hook(server, key, receiver.url)
        queued = await ping(server, key, hook["id"])
        await wait_for(attempts_reach(server, queued["id"], 1))
        r = await server.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"active": False}, headers=auth(key))
        assert r.status_code == 200
        receiver.status = 200
        shift_clock(server, 15)
        await wait_for(lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE id = %s AND status = 'dead'",
                                          (queued["id"],)))
        seen = await delivery(server, key, hook["id"], queued["id"])
        assert (seen["attempts"], seen["last_error"]) == (1, "webhook disabled")
        assert len(receiver.requests) == 1
        r = await server.http.post(f"/api/v1/webhooks/deliveries/{queued['id']}/redeliver", headers=auth(key))
        assert r.status_code == 409 and r.json() == {"error": "Webhook is disabled; enable it first"}
        await server.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"active": True}, headers=auth(key))
        r = await server.http.post(f"/api/v1/webhooks/deliveries/{queued['id']}/redeliver", headers=auth(key))
        assert r.status_code == 202
        await receiver.nth(2)


def emit_elsewhere(database_url: str) -> None:
    """Write an event as another node would: its own connection, committed there."""
    with psycopg.connect(database_url) as conn:
        outbox.emit(conn, "sms_received", {"message_id": "msg_elsewhere", "from": "+14155552671",
                                           "message": "hi", "received_at": None, "gateway_id": "far-phone"})


def listener_pids(server) -> list[int]:
    return [r["pid"] for r in server.sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'smsgw-webhooks'"
        " AND datname = current_database() AND query = 'LISTEN smsgw_webhooks'")]


async def test_event_committed_elsewhere_wakes_the_actor_before_the_sweep(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        await create_hook(server, key, receiver.url)
        await wait_for(lambda: listener_pids(server))
        emit_elsewhere(server.database_url)
        got = await receiver.nth(1, timeout=2)  # the sweep alone would take up to 5 s
    assert got.json["message_id"] == "msg_elsewhere"


async def test_listener_reconnects_after_its_connection_is_killed(server):
    key = server.client_key("sms")
    async with receiving() as receiver:
        await create_hook(server, key, receiver.url)
        [old] = await wait_for(lambda: listener_pids(server))
        server.sql("SELECT pg_terminate_backend(%s)", (old,))
        await wait_for(lambda: [pid for pid in listener_pids(server) if pid != old], timeout=10)
        emit_elsewhere(server.database_url)
        got = await receiver.nth(1, timeout=2)
    assert got.json["gateway_id"] == "far-phone"
