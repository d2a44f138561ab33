"""Client SMS endpoints: send, status, received."""

import re

import pytest

from tests.conftest import clean, running_node, wait_for


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def test_send_answers_202_only_after_the_row_is_committed(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key),
                               json={"to": "+1234567890", "message": "Your verification code is: 123456"})
    # +1234567890 is not a valid US number: the seed's example number is refused with a reason
    assert r.status_code == 422 and r.json()["error"].startswith("to:")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key),
                               json={"to": "(415) 555-2671", "message": "Your verification code is: 123456"})
    assert r.status_code == 202
    body = r.json()
    assert body["success"] is True and body["status"] == "queued"
    assert re.fullmatch(r"msg_[0-9A-Za-z]{22}", body["message_id"])
    assert body["segments"] == 1 and body["encoding"] == "GSM-7"
    row = server.sql("SELECT phone_number, status FROM messages WHERE message_id = %s", (body["message_id"],))
    assert row == [{"phone_number": "+14155552671", "status": "queued"}]


async def test_message_ids_are_random_not_sequential(server):
    key = server.client_key("sms")
    ids = [(await server.send(key))["message_id"] for _ in range(20)]
    assert len(set(ids)) == 20
    # consecutive ids share no common prefix beyond chance: not a counter
    assert len({i[4:6] for i in ids}) > 10


@pytest.mark.parametrize("body, field, fragment", [
    ({"message": "hi"}, "to", "Field required"),
    ({"to": "+14155552671"}, "message", "Field required"),
    ({"to": "+14155552671", "message": ""}, "message", "at least 1"),
    ({"to": "+14155552671", "message": "x" * 1601}, "message", "at most 1600"),
    ({"to": 14155552671, "message": "hi"}, "to", "valid string"),
    ({"to": "+14155552671", "message": 5}, "message", "valid string"),
    ({"to": "not-a-number", "message": "hi"}, "to", "not a phone number"),
    ({"to": "+1415555", "message": "hi"}, "to", "not a possible phone number"),
    ({"to": "+14155552671", "message": "hi", "ttl_seconds": 5}, "ttl_seconds", "greater than or equal"),
    ({"to": "+14155552671", "message": "hi", "priority": "urgent"}, "priority", "high"),
])
async def test_send_validation_is_422_naming_the_field(server, body, field, fragment):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json=body)
    assert r.status_code == 422
    assert r.json()["error"].startswith(field + ":") and fragment in r.json()["error"]


async def test_send_over_ten_segments_is_422(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json={"to": "+14155552671", "message": "中" * 700})
    assert r.status_code == 422 and "segments" in r.json()["error"]
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json={"to": "+14155552671", "message": "я" * 100})
    assert r.status_code == 202 and r.json()["encoding"] == "UCS-2" and r.json()["segments"] == 2


async def test_bad_json_and_content_type_are_400(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers={**bearer(key), "Content-Type": "application/json"},
                               content=b'{"to": ')
    assert r.status_code == 400 and r.json() == {"error": "Malformed JSON body"}
    r = await server.http.post("/api/v1/sms/send", headers={**bearer(key), "Content-Type": "text/plain"},
                               content=b"to=1")
    assert r.status_code == 400 and "Content-Type" in r.json()["error"]
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json=["not", "an", "object"])
    assert r.status_code == 400 and r.json() == {"error": "JSON body must be an object"}


async def test_body_over_64_kib_is_413(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key),
                               json={"to": "+14155552671", "message": "x" * 70_000})
    assert r.status_code == 413 and "error" in r.json()


async def test_send_needs_a_client_key_with_sms_scope(server):
    gw = await server.register("dev-1")
    otp_only = server.client_key("otp")
    body = {"to": "+14155552671", "message": "hi"}
    assert (await server.http.post("/api/v1/sms/send", json=body)).status_code == 401
    assert (await server.http.post("/api/v1/sms/send", json=body, headers=bearer("api_live_nope"))).status_code == 401
    assert (await server.http.post("/api/v1/sms/send", json=body, headers={"Authorization": "Basic abc"})).status_code == 401
    assert (await server.http.post("/api/v1/sms/send", json=body, headers=bearer(gw))).status_code == 403
    r = await server.http.post("/api/v1/sms/send", json=body, headers=bearer(otp_only))
    assert r.status_code == 403 and "sms" in r.json()["error"]


async def test_revoked_key_is_401_at_once(server):
    key = server.client_key("sms")
    await server.send(key)
    server.sql("UPDATE api_keys SET revoked_at = now()")
    # The node hears of it by NOTIFY at commit (tests/actors/test_key_cache.py): a request sent in
    # the same instant may still be read before that notification is.
    await wait_for(lambda: not server.node.keys._entries, timeout=2)
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json={"to": "+14155552671", "message": "hi"})
    assert r.status_code == 401


async def test_idempotency_key_returns_the_first_answer(server):
    key = server.client_key("sms")
    headers = {**bearer(key), "Idempotency-Key": "order-42"}
    body = {"to": "+14155552671", "message": "once"}
    r1 = await server.http.post("/api/v1/sms/send", headers=headers, json=body)
    r2 = await server.http.post("/api/v1/sms/send", headers=headers, json=body)
    assert r1.status_code == r2.status_code == 202 and r1.json() == r2.json()
    assert server.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 1
    r3 = await server.http.post("/api/v1/sms/send", headers=headers, json={**body, "message": "other"})
    assert r3.status_code == 409


async def test_status_of_unknown_or_foreign_message_is_404(server):
    mine, theirs = server.client_key("sms"), server.client_key("sms")
    admin = server.client_key("admin")
    sent = await server.send(mine)
    r = await server.http.get("/api/v1/sms/status/msg_unknown", headers=bearer(mine))
    assert r.status_code == 404 and r.json() == {"error": "Message not found"}
    r = await server.http.get(f"/api/v1/sms/status/{sent['message_id']}", headers=bearer(theirs))
    assert r.status_code == 404
    r = await server.http.get(f"/api/v1/sms/status/{sent['message_id']}", headers=bearer(admin))
    assert r.status_code == 200


async def test_status_has_the_seed_fields(server):
    key = server.client_key("sms")
    sent = await server.send(key)
    status = await server.status(key, sent["message_id"])
    for field in ("message_id", "status", "sent_at", "delivered_at", "failed_at", "error_message"):
        assert field in status
    assert status["status"] == "queued" and status["sent_at"] is None


async def test_received_filters_and_pages(server):
    gw = await server.register("dev-1")
    for i in range(5):
        sender = "+14155552671" if i % 2 == 0 else "+14155552672"
        await server.http.post("/api/v1/gateway/sms/received", headers=bearer(gw), json={
            "sender": sender, "message": f"m{i}", "timestamp": f"2025-10-19T10:3{i}:00Z"})
    key = server.client_key("sms")
    page = (await server.http.get("/api/v1/sms/received?limit=2&page=2", headers=bearer(key))).json()
    assert page["total"] == 5 and page["pages"] == 3 and page["page"] == 2
    assert [m["message"] for m in page["messages"]] == ["m2", "m1"]  # newest first
    only = (await server.http.get("/api/v1/sms/received?phone_number=4155552672", headers=bearer(key))).json()
    assert only["total"] == 2 and {m["from"] for m in only["messages"]} == {"+14155552672"}
    since = (await server.http.get("/api/v1/sms/received?since=2025-10-19T10:32:00Z", headers=bearer(key))).json()
    assert [m["message"] for m in since["messages"]] == ["m4", "m3"]


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"), ("page=0", "page"),
    ("since=yesterday", "since"), ("phone_number=xyz", "phone_number"),
])
async def test_received_query_validation(server, query, field):
    key = server.client_key("sms")
    r = await server.http.get(f"/api/v1/sms/received?{query}", headers=bearer(key))
    assert r.status_code == 422 and r.json()["error"].startswith(field + ":")


async def test_rate_limit_per_key(database_url):
    clean(database_url)
    async with running_node(database_url, RATE_LIMIT_PER_KEY_PER_MINUTE="3") as node:
        key, other = node.client_key("sms"), node.client_key("sms")
        codes = [(await node.http.get("/api/v1/sms/received", headers=bearer(key))).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await node.http.get("/api/v1/sms/received", headers=bearer(key))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.headers["RateLimit-Remaining"] == "0"
        ok = await node.http.get("/api/v1/sms/received", headers=bearer(other))
        assert ok.status_code == 200 and ok.headers["RateLimit-Limit"] == "3"


async def test_idempotency_key_longer_than_255_is_422(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers={**bearer(key), "Idempotency-Key": "k" * 256},
                               json={"to": "+14155552671", "message": "hi"})
    assert r.status_code == 422 and r.json()["error"].startswith("Idempotency-Key:")
    assert server.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 0
