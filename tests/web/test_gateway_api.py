"""Gateway device endpoints: register, heartbeat, inbound SMS, delivery status."""

import re

import pytest

from tests.conftest import phone


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def test_register_answers_201_with_a_gateway_key_and_websocket_url(server):
    r = await server.http.post("/api/v1/gateway/register", json={"device_id": "dev-1", "name": "My Phone"})
    assert r.status_code == 201
    body = r.json()
    assert body["success"] is True and body["device_id"] == "dev-1"
    assert re.fullmatch(r"gw_live_[0-9A-Za-z]{43}", body["api_key"])
    assert body["websocket_url"] == server.ws_url
    rows = server.sql("SELECT digest, prefix FROM api_keys WHERE kind = 'gateway'")
    assert len(rows) == 1 and body["api_key"] not in str(rows)  # only the digest is stored


async def test_registering_a_taken_device_id_without_its_key_is_409(server):
    await server.register("dev-1")
    r = await server.http.post("/api/v1/gateway/register", json={"device_id": "dev-1", "name": "Thief"})
    assert r.status_code == 409 and "already registered" in r.json()["error"]
    other = await server.register("dev-2")
    r = await server.http.post("/api/v1/gateway/register", json={"device_id": "dev-1", "name": "Thief"},
                               headers=bearer(other))
    assert r.status_code == 409


async def test_reregistering_with_own_key_rotates_it(server):
    old = await server.register("dev-1")
    r = await server.http.post("/api/v1/gateway/register", json={"device_id": "dev-1", "name": "Renamed"},
                               headers=bearer(old))
    assert r.status_code == 201
    new = r.json()["api_key"]
    assert new != old
    assert (await server.http.post("/api/v1/gateway/heartbeat", json={}, headers=bearer(old))).status_code == 401
    assert (await server.http.post("/api/v1/gateway/heartbeat", json={}, headers=bearer(new))).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"name": "x"}, "device_id"),
    ({"device_id": "ok"}, "name"),
    ({"device_id": "", "name": "x"}, "device_id"),
    ({"device_id": "has space", "name": "x"}, "device_id"),
    ({"device_id": "x" * 129, "name": "x"}, "device_id"),
    ({"device_id": "ok", "name": "n" * 101}, "name"),
    ({"device_id": 12, "name": "x"}, "device_id"),
])
async def test_register_validation_is_422_naming_the_field(server, body, field):
    r = await server.http.post("/api/v1/gateway/register", json=body)
    assert r.status_code == 422
    assert r.json()["error"].startswith(field + ":")


async def test_register_rate_limit_per_ip(database_url):
    from tests.conftest import clean, running_node
    clean(database_url)
    async with running_node(database_url, RATE_LIMIT_REGISTER_PER_MINUTE="2") as node:
        codes = []
        for i in range(3):
            r = await node.http.post("/api/v1/gateway/register", json={"device_id": f"d{i}", "name": "x"})
            codes.append(r.status_code)
        assert codes == [201, 201, 429]
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["RateLimit-Limit"] == "2" and r.headers["RateLimit-Remaining"] == "0"
        assert r.json() == {"error": "Rate limit exceeded"}


async def test_heartbeat_updates_health_and_counts_pending(server):
    key = await server.register("dev-1")
    client = server.client_key("sms")
    await server.send(client)  # queued, no gateway yet: not this gateway's
    r = await server.http.post("/api/v1/gateway/heartbeat", headers=bearer(key), json={
        "status": "online", "messages_in_queue": 5, "battery_level": 85, "signal_strength": 4})
    assert r.status_code == 200
    assert r.json() == {"success": True, "pending_messages": 0}
    row = server.sql("SELECT status, battery_level, signal_strength, messages_in_queue, last_heartbeat_at"
                     " FROM gateways")[0]
    assert row["status"] == "online" and row["battery_level"] == 85 and row["signal_strength"] == 4
    assert row["messages_in_queue"] == 5 and row["last_heartbeat_at"] is not None


@pytest.mark.parametrize("body, field", [
    ({"battery_level": 101}, "battery_level"),
    ({"battery_level": "85"}, "battery_level"),
    ({"signal_strength": -1}, "signal_strength"),
    ({"messages_in_queue": -3}, "messages_in_queue"),
    ({"status": "sleeping"}, "status"),
])
async def test_heartbeat_validation(server, body, field):
    key = await server.register("dev-1")
    r = await server.http.post("/api/v1/gateway/heartbeat", headers=bearer(key), json=body)
    assert r.status_code == 422 and r.json()["error"].startswith(field + ":")


async def test_gateway_endpoints_need_a_gateway_key(server):
    client = server.client_key("sms")
    r = await server.http.post("/api/v1/gateway/heartbeat", json={})
    assert r.status_code == 401 and "error" in r.json()
    r = await server.http.post("/api/v1/gateway/heartbeat", json={}, headers=bearer("gw_live_" + "x" * 43))
    assert r.status_code == 401
    r = await server.http.post("/api/v1/gateway/heartbeat", json={}, headers=bearer(client))
    assert r.status_code == 403


async def test_received_sms_is_stored_once_and_listed(server):
    key = await server.register("dev-1")
    body = {"sender": "+1 415 555 2671", "message": "Hello", "timestamp": "2025-10-19T10:30:00Z"}
    r1 = await server.http.post("/api/v1/gateway/sms/received", headers=bearer(key), json=body)
    r2 = await server.http.post("/api/v1/gateway/sms/received", headers=bearer(key), json=body)
    assert r1.status_code == 200 and r1.json()["success"] is True
    assert r1.json()["message_id"].startswith("msg_")
    assert r2.json()["message_id"] == r1.json()["message_id"]  # a resend is deduplicated
    client = server.client_key("sms")
    listed = (await server.http.get("/api/v1/sms/received", headers=bearer(client))).json()
    assert listed["total"] == 1 and listed["page"] == 1 and listed["pages"] == 1
    assert listed["messages"] == [{"message_id": r1.json()["message_id"], "from": "+14155552671",
                                   "message": "Hello", "received_at": "2025-10-19T10:30:00Z"}]
    row = server.sql("SELECT messages_received_today, total_messages_received FROM gateways")[0]
    assert row == {"messages_received_today": 1, "total_messages_received": 1}


@pytest.mark.parametrize("body, field", [
    ({"message": "x"}, "sender"),
    ({"sender": "+14155552671"}, "message"),
    ({"sender": "+14155552671", "message": "x", "timestamp": "yesterday"}, "timestamp"),
    ({"sender": "!!", "message": "x"}, "sender"),
])
async def test_received_sms_validation(server, body, field):
    key = await server.register("dev-1")
    r = await server.http.post("/api/v1/gateway/sms/received", headers=bearer(key), json=body)
    assert r.status_code == 422 and r.json()["error"].startswith(field + ":")


async def test_status_report_over_rest_moves_the_message(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        sent = await server.send(client)
        sms = await p.next_sms()
        for status in ("sent", "delivered"):
            r = await server.http.post("/api/v1/gateway/sms/status", headers=bearer(key),
                                       json={"message_id": sms["message_id"], "status": status, "error_message": None})
            assert r.status_code == 200 and r.json() == {"success": True}
    status = await server.status(client, sent["message_id"])
    assert status["status"] == "delivered" and status["failed_at"] is None
    row = server.sql("SELECT messages_sent_today, total_messages_sent FROM gateways")[0]
    assert row == {"messages_sent_today": 1, "total_messages_sent": 1}


async def test_status_report_for_another_gateways_message_is_404(server):
    client = server.client_key("sms")
    key1 = await server.register("dev-1")
    key2 = await server.register("dev-2")
    async with phone(server, key1) as p:
        await server.send(client)
        sms = await p.next_sms()
        r = await server.http.post("/api/v1/gateway/sms/status", headers=bearer(key2),
                                   json={"message_id": sms["message_id"], "status": "delivered"})
        assert r.status_code == 404 and r.json()["error"] == "Message not found for this gateway"
        r = await server.http.post("/api/v1/gateway/sms/status", headers=bearer(key1),
                                   json={"message_id": "msg_doesnotexist", "status": "sent"})
        assert r.status_code == 404


async def test_status_report_validation(server):
    key = await server.register("dev-1")
    r = await server.http.post("/api/v1/gateway/sms/status", headers=bearer(key),
                               json={"message_id": "msg_x", "status": "lost"})
    assert r.status_code == 422 and r.json()["error"].startswith("status:")


async def test_pending_pull_lists_messages_assigned_to_the_gateway(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        sent = await server.send(client, message="pull me")
        await p.next_sms()
        r = await server.http.get("/api/v1/gateway/messages/pending", headers=bearer(key))
        assert r.status_code == 200
        assert [m["message_id"] for m in r.json()["messages"]] == [sent["message_id"]]
        assert r.json()["messages"][0]["message"] == "pull me"
