"""Webhooks: the management API (create, list, patch, delete, deliveries) and its errors."""

from __future__ import annotations

import json

import pytest

from tests.web.webhook_receiver import (SECRET, auth, create_hook, ping)


async def test_created_webhook_is_listed_and_never_shows_its_secret(server):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "https://example.com/hooks", ["sms_sent", "sms_failed"],
                             secret_key=SECRET, description="billing")
    assert set(hook) == {"id", "url", "events", "active", "description", "has_secret", "created_at", "updated_at"}
    assert hook["url"] == "https://example.com/hooks" and hook["events"] == ["sms_sent", "sms_failed"]
    assert hook["active"] is True and hook["has_secret"] is True and hook["description"] == "billing"
    listed = (await server.http.get("/api/v1/webhooks", headers=auth(key))).json()
    assert listed == {"webhooks": [hook], "total": 1}
    one = await server.http.get(f"/api/v1/webhooks/{hook['id']}", headers=auth(key))
    assert one.status_code == 200 and one.json() == hook
    assert SECRET not in json.dumps(listed) + one.text


async def test_patch_changes_fields_and_null_removes_the_secret(server):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "https://example.com/a", secret_key=SECRET)
    r = await server.http.patch(f"/api/v1/webhooks/{hook['id']}", headers=auth(key), json={
        "url": "http://example.org/b", "events": ["gateway_online", "gateway_offline"], "active": False,
        "description": "ops", "secret_key": None})
    assert r.status_code == 200, r.text
    assert r.json() | {"updated_at": None} == hook | {
        "url": "http://example.org/b", "events": ["gateway_online", "gateway_offline"], "active": False,
        "description": "ops", "has_secret": False, "updated_at": None}
    r = await server.http.patch(f"/api/v1/webhooks/{hook['id']}", headers=auth(key), json={"secret_key": SECRET})
    assert r.json()["has_secret"] is True and r.json()["url"] == "http://example.org/b"


async def test_deleted_webhook_is_gone(server):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "https://example.com/a")
    r = await server.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=auth(key))
    assert r.status_code == 200 and r.json() == {"success": True}
    r = await server.http.get(f"/api/v1/webhooks/{hook['id']}", headers=auth(key))
    assert r.status_code == 404 and r.json() == {"error": "Webhook not found"}
    assert (await server.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=auth(key))).status_code == 404


async def test_another_keys_webhook_is_not_found_but_admin_sees_all(server):
    owner, other, admin = server.client_key("sms"), server.client_key("sms"), server.client_key("admin")
    hook = await create_hook(server, owner, "https://example.com/a")
    sent = await ping(server, owner, hook["id"])
    base = f"/api/v1/webhooks/{hook['id']}"
    for method, path in [("GET", base), ("PATCH", base), ("DELETE", base), ("GET", base + "/deliveries"),
                         ("POST", base + "/test"), ("POST", f"/api/v1/webhooks/deliveries/{sent['id']}/redeliver")]:
        r = await server.http.request(method, path, headers=auth(other), json={"active": False})
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] in ("Webhook not found", "Delivery not found")
    assert (await server.http.get("/api/v1/webhooks", headers=auth(other))).json() == {"webhooks": [], "total": 0}
    assert [h["id"] for h in (await server.http.get("/api/v1/webhooks", headers=auth(admin))).json()["webhooks"]] \
        == [hook["id"]]
    assert (await server.http.get(base, headers=auth(admin))).status_code == 200


GOOD = {"url": "https://example.com/hook", "events": ["sms_received"]}


@pytest.mark.parametrize(("body", "field"), [
    ({**GOOD, "url": "ftp://example.com/hook"}, "url"),
    ({**GOOD, "url": "example.com/hook"}, "url"),
    ({**GOOD, "url": "http:///no-host"}, "url"),
    ({**GOOD, "url": "https://example.com/" + "a" * 2030}, "url"),
    ({**GOOD, "url": "https://example.com:99999/"}, "url"),
    ({**GOOD, "url": 42}, "url"),
    ({"events": ["sms_received"]}, "url"),
    ({**GOOD, "events": []}, "events"),
    ({**GOOD, "events": ["sms_exploded"]}, "events"),
    ({**GOOD, "events": ["ping"]}, "events"),
    ({**GOOD, "events": ["sms_sent", "sms_sent"]}, "events"),
    ({**GOOD, "events": "sms_sent"}, "events"),
    ({"url": GOOD["url"]}, "events"),
    ({**GOOD, "secret_key": "short-secret-15"}, "secret_key"),
    ({**GOOD, "secret_key": "s" * 257}, "secret_key"),
    ({**GOOD, "description": "d" * 501}, "description"),
    ({**GOOD, "active": "yes"}, "active"),
])
async def test_bad_webhook_is_a_422_naming_the_field(server, body, field):
    key = server.client_key("sms")
    r = await server.http.post("/api/v1/webhooks", json=body, headers=auth(key))
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(f"{field}"), r.json()


@pytest.mark.parametrize(("patch", "field"), [
    ({"url": None}, "url"), ({"events": None}, "events"), ({"active": None}, "active"),
    ({"events": ["nope"]}, "events"), ({"url": "mailto:x@example.com"}, "url"),
])
async def test_bad_patch_is_a_422_naming_the_field(server, patch, field):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "https://example.com/a")
    r = await server.http.patch(f"/api/v1/webhooks/{hook['id']}", json=patch, headers=auth(key))
    assert r.status_code == 422 and r.json()["error"].startswith(field), r.text


async def test_malformed_requests_are_400_and_bad_keys_401_or_403(server):
    key, otp_only = server.client_key("sms"), server.client_key("otp")
    r = await server.http.post("/api/v1/webhooks", content=b"{nope", headers={**auth(key), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "Malformed JSON body"}
    r = await server.http.post("/api/v1/webhooks", json=["x"], headers=auth(key))
    assert r.status_code == 400 and r.json() == {"error": "JSON body must be an object"}
    r = await server.http.post("/api/v1/webhooks", content=b"url=x", headers={**auth(key), "Content-Type": "text/plain"})
    assert r.status_code == 400 and "Content-Type" in r.json()["error"]
    assert (await server.http.get("/api/v1/webhooks")).status_code == 401
    r = await server.http.get("/api/v1/webhooks", headers=auth(otp_only))
    assert r.status_code == 403 and r.json() == {"error": "This key lacks the 'sms' scope"}


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "page=0", "limit=ten"])
async def test_bad_deliveries_page_is_a_422(server, query):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "https://example.com/a")
    r = await server.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?{query}", headers=auth(key))
    assert r.status_code == 422 and r.json()["error"].startswith(query.split("=")[0]), r.text


async def test_deliveries_are_paged_newest_first(server):
    key = server.client_key("sms")
    hook = await create_hook(server, key, "http://127.0.0.1:9/unreachable")
    ids = [(await ping(server, key, hook["id"]))["id"] for _ in range(3)]
    r = await server.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=2", headers=auth(key))
    page1 = r.json()
    assert [d["id"] for d in page1["deliveries"]] == ids[::-1][:2]
    assert (page1["total"], page1["page"], page1["pages"]) == (3, 1, 2)
    page2 = (await server.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=2&page=2",
                                   headers=auth(key))).json()
    assert [d["id"] for d in page2["deliveries"]] == [ids[0]]
    assert set(page2["deliveries"][0]) == {"id", "webhook_id", "event_id", "event", "status", "attempts",
                                           "last_status_code", "last_error", "next_attempt_at", "created_at",
                                           "delivered_at"}


# Deliveries.
