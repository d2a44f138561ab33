"""Bulk sending, scheduling, cancelling, priorities and the outbound list."""

from datetime import datetime, timedelta, timezone

import trio

from tests.conftest import phone


def bearer(key, **extra):
    return {"Authorization": f"Bearer {key}", **extra}


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_bulk_accepts_valid_entries_and_lists_the_refused(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={"messages": [
        {"to": "+14155552671", "message": "one", "reference": "r1"},
        {"to": "nope", "message": "two"},
        {"to": "+14155552672", "message": "three", "priority": "high"},
        {"message": "no recipient"},
    ]})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 2
    assert [x["index"] for x in body["results"]] == [0, 1, 2, 3]
    assert body["results"][0]["status"] == "queued" and body["results"][0]["segments"] == 1
    assert body["results"][1]["status"] == "rejected"
    assert [(e["index"], e["error"].split(":")[0]) for e in body["errors"]] == [(1, "to"), (3, "to")]
    rows = server.sql("SELECT body, priority, reference FROM messages ORDER BY id")
    assert rows == [{"body": "one", "priority": 2, "reference": "r1"},   # bulk defaults to low
                    {"body": "three", "priority": 0, "reference": None}]


async def test_bulk_one_text_to_many_numbers(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={
        "to": ["+14155552671", "+14155552672", "4155552673"], "message": "sale!", "reference": "camp-7"})
    assert r.status_code == 202 and r.json()["accepted"] == 3
    rows = server.sql("SELECT phone_number, reference FROM messages ORDER BY id")
    assert [r["phone_number"] for r in rows] == ["+14155552671", "+14155552672", "+14155552673"]
    assert {r["reference"] for r in rows} == {"camp-7"}


async def test_bulk_envelope_errors_store_nothing(server):
    key = server.client_key("sms")
    cases = [
        ({"messages": "not a list"}, 422),
        ({"messages": [{"to": "+14155552671", "message": "x"}] * 1001}, 422),
        ({"to": ["+14155552671"]}, 422),
        ({"nothing": True}, 422),
        ({"messages": [{"to": "bad", "message": "x"}]}, 422),
        (["a", "list"], 400),
    ]
    for body, status in cases:
        r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json=body)
        assert r.status_code == status, (body if len(str(body)) < 200 else "big", r.text[:200])
        assert "error" in r.json()
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key, **{"Content-Type": "application/json"}),
                               content=b'{"messages": [')
    assert r.status_code == 400
    big = {"messages": [{"to": "+14155552671", "message": "x" * 1500}] * 700}  # ~1.1 MB
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json=big)
    assert r.status_code == 413
    assert server.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 0


async def test_bulk_of_1000_is_accepted_in_one_transaction(server):
    key = server.client_key("sms")
    entries = [{"to": f"+1415555{2000 + i:04d}", "message": f"m{i}"} for i in range(1000)]
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={"messages": entries})
    assert r.status_code == 202 and r.json()["accepted"] == 1000
    assert server.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 1000


async def test_bulk_idempotency_key(server):
    key = server.client_key("sms")
    headers = bearer(key, **{"Idempotency-Key": "campaign-1"})
    body = {"to": ["+14155552671", "+14155552672"], "message": "once"}
    r1 = await server.http.post("/api/v1/sms/send_bulk", headers=headers, json=body)
    r2 = await server.http.post("/api/v1/sms/send_bulk", headers=headers, json=body)
    assert r1.json() == r2.json()
    assert server.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 2


async def test_scheduled_message_waits_then_goes(server):
    key = server.client_key("sms")
    gw = await server.register("dev-1")
    send_at = datetime.now(timezone.utc) + timedelta(seconds=3)
    sent = await server.send(key, send_at=iso(send_at))
    assert sent["status"] == "scheduled"
    status = await server.status(key, sent["message_id"])
    assert status["status"] == "scheduled" and status["send_at"] == iso(send_at)
    async with phone(server, gw) as p:
        sms = await p.next_sms(timeout=15)
        assert sms["message_id"] == sent["message_id"]
    assert datetime.now(timezone.utc) >= send_at


async def test_send_at_more_than_30_days_ahead_is_422(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json={
        "to": "+14155552671", "message": "x", "send_at": iso(datetime.now(timezone.utc) + timedelta(days=31))})
    assert r.status_code == 422 and r.json()["error"].startswith("send_at:")
    r = await server.http.post("/api/v1/sms/send", headers=bearer(key), json={
        "to": "+14155552671", "message": "x", "send_at": "soon"})
    assert r.status_code == 422 and r.json()["error"].startswith("send_at:")


async def test_cancel_before_and_after_dispatch(server):
    key, other = server.client_key("sms"), server.client_key("sms")
    later = await server.send(key, send_at=iso(datetime.now(timezone.utc) + timedelta(hours=1)))
    assert (await server.http.post(f"/api/v1/sms/{later['message_id']}/cancel", headers=bearer(other))).status_code == 404
    r = await server.http.post(f"/api/v1/sms/{later['message_id']}/cancel", headers=bearer(key))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await server.status(key, later["message_id"]))["status"] == "cancelled"
    gw = await server.register("dev-1")
    async with phone(server, gw) as p:
        now = await server.send(key)
        await p.next_sms()
        r = await server.http.post(f"/api/v1/sms/{now['message_id']}/cancel", headers=bearer(key))
        assert r.status_code == 409 and "dispatched" in r.json()["error"]
    r = await server.http.post("/api/v1/sms/msg_unknown/cancel", headers=bearer(key))
    assert r.status_code == 404


async def test_high_priority_overtakes_a_low_priority_backlog(database_url):
    from tests.conftest import clean, running_node
    clean(database_url)
    async with running_node(database_url, GATEWAY_SEND_RATE_PER_MINUTE="600") as node:
        key = node.client_key("sms")
        entries = [{"to": "+14155552671", "message": f"promo {i}"} for i in range(500)]
        r = await node.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={"messages": entries})
        assert r.status_code == 202
        gw = await node.register("dev-1")
        async with phone(node, gw) as p:
            first = await p.next_sms()  # the phone is busy with the campaign
            urgent = await node.send(key, message="Your code is 123456", priority="high")
            seen = [first["message_id"]]
            with trio.fail_after(5):
                while urgent["message_id"] not in seen:
                    sms = await p.next_sms()
                    seen.append(sms["message_id"])
                    await p.report(sms["message_id"], "delivered")
            # the phone holds at most its window (10) of promos; the next round serves the OTP first
            assert len(seen) <= 11, len(seen)


async def test_outbound_list_filters_by_reference_and_status(server):
    key, other = server.client_key("sms"), server.client_key("sms")
    a = await server.send(key, reference="order-1")
    await server.send(key, reference="order-2")
    await server.send(other, reference="order-1")
    r = (await server.http.get("/api/v1/sms?reference=order-1", headers=bearer(key))).json()
    assert [m["message_id"] for m in r["messages"]] == [a["message_id"]] and r["total"] == 1
    r = (await server.http.get("/api/v1/sms?status=queued&limit=1", headers=bearer(key))).json()
    assert r["total"] == 2 and r["pages"] == 2 and len(r["messages"]) == 1
    bad = await server.http.get("/api/v1/sms?status=lost", headers=bearer(key))
    assert bad.status_code == 422 and bad.json()["error"].startswith("status:")


async def test_bulk_with_both_messages_and_to_is_422(server):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={
        "messages": [{"to": "+14155552671", "message": "x"}], "to": ["+14155552672"], "message": "y"})
    assert r.status_code == 422 and r.json()["error"] == "messages: give either messages or to, not both"
    r = await server.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={"to": ["+14155552672"]})
    assert r.status_code == 422 and r.json()["error"] == "message: Field required with to"
    assert server.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 0
