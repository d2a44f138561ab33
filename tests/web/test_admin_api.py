"""Admin endpoints: gateways with live state, one gateway, patch, toggle, stats."""

from tests.conftest import phone, wait_for


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


SEED_FIELDS = {"id", "device_id", "name", "status", "last_heartbeat_at", "messages_sent_today",
               "messages_received_today", "total_messages_sent", "total_messages_received", "active",
               "priority", "metadata", "created_at"}


async def test_admin_endpoints_need_the_admin_scope(server):
    plain = server.client_key("sms", "otp")
    for method, path in [("GET", "/api/v1/admin/gateways"), ("GET", "/api/v1/admin/stats"),
                         ("POST", "/api/v1/admin/gateways/1/toggle"), ("GET", "/api/v1/admin/gateways/1")]:
        r = await server.http.request(method, path, headers=bearer(plain))
        assert r.status_code == 403 and "admin" in r.json()["error"]
        r = await server.http.request(method, path)
        assert r.status_code == 401


async def test_gateways_list_has_seed_fields_and_live_status(server):
    admin = server.client_key("admin")
    key = await server.register("test-gateway-001", "Test Gateway 1")
    await server.register("test-gateway-002", "Test Gateway 2")
    async with phone(server, key) as p:
        await p.perform("heartbeat", battery_level=77, signal_strength=3, messages_in_queue=0)
        await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE battery_level = 77"))
        r = await server.http.get("/api/v1/admin/gateways", headers=bearer(admin))
        assert r.status_code == 200
        gateways = {g["device_id"]: g for g in r.json()["gateways"]}
        assert SEED_FIELDS <= set(gateways["test-gateway-001"])
        live = gateways["test-gateway-001"]
        assert live["status"] == "online" and live["connected"] is True
        assert live["battery_level"] == 77 and live["signal_strength"] == 3
        assert gateways["test-gateway-002"]["status"] == "offline"
        assert gateways["test-gateway-002"]["connected"] is False
        online = (await server.http.get("/api/v1/admin/gateways?status=online", headers=bearer(admin))).json()
        assert [g["device_id"] for g in online["gateways"]] == ["test-gateway-001"]
    await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE device_id = 'test-gateway-001' AND status = 'offline'"))
    r = await server.http.get("/api/v1/admin/gateways?status=online", headers=bearer(admin))
    assert r.json()["gateways"] == []


async def test_gateway_filters_and_paging(server):
    admin = server.client_key("admin")
    for i in range(3):
        await server.register(f"dev-{i}")
    await server.http.post("/api/v1/admin/gateways/2/toggle", headers=bearer(admin))
    r = (await server.http.get("/api/v1/admin/gateways?active=false", headers=bearer(admin))).json()
    assert [g["id"] for g in r["gateways"]] == [2]
    r = (await server.http.get("/api/v1/admin/gateways?limit=2&page=2", headers=bearer(admin))).json()
    assert r["total"] == 3 and r["pages"] == 2 and len(r["gateways"]) == 1
    r = await server.http.get("/api/v1/admin/gateways?status=asleep", headers=bearer(admin))
    assert r.status_code == 422 and r.json()["error"].startswith("status:")


async def test_toggle_answers_like_the_seed_and_unknown_is_404(server):
    admin = server.client_key("admin")
    await server.register("test-gateway-001")
    r = await server.http.post("/api/v1/admin/gateways/1/toggle", headers=bearer(admin))
    assert r.status_code == 200
    assert r.json() == {"success": True, "gateway": {"id": 1, "device_id": "test-gateway-001", "active": False}}
    r = await server.http.post("/api/v1/admin/gateways/1/toggle", headers=bearer(admin))
    assert r.json()["gateway"]["active"] is True
    r = await server.http.post("/api/v1/admin/gateways/999/toggle", headers=bearer(admin))
    assert r.status_code == 404 and r.json() == {"error": "Gateway not found"}


async def test_deactivated_gateway_gets_nothing_and_its_unsent_move_on(server):
    admin = server.client_key("admin")
    client = server.client_key("sms")
    k1, k2 = await server.register("dev-1"), await server.register("dev-2")
    async with phone(server, k1) as p1:
        first = await server.send(client)
        sms = await p1.next_sms()
        assert sms["message_id"] == first["message_id"]
        await server.http.post("/api/v1/admin/gateways/1/toggle", headers=bearer(admin))
        async with phone(server, k2) as p2:
            moved = await p2.next_sms()  # the unsent message moves to the other phone
            assert moved["message_id"] == first["message_id"]
            second = await server.send(client)
            assert (await p2.next_sms())["message_id"] == second["message_id"]


async def test_patch_gateway_validates_and_applies(server):
    admin = server.client_key("admin")
    await server.register("dev-1")
    r = await server.http.patch("/api/v1/admin/gateways/1", headers=bearer(admin), json={
        "name": "Shelf phone", "priority": 5, "send_rate_per_minute": 12, "metadata": {"sim": "A"}})
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "Shelf phone" and body["priority"] == 5
    assert body["send_rate_per_minute"] == 12 and body["metadata"] == {"sim": "A"}
    for bad, field in [({"priority": -1}, "priority"), ({"name": ""}, "name"),
                       ({"send_rate_per_minute": "fast"}, "send_rate_per_minute"), ({"metadata": [1]}, "metadata"),
                       ({"active": "yes"}, "active")]:
        r = await server.http.patch("/api/v1/admin/gateways/1", headers=bearer(admin), json=bad)
        assert r.status_code == 422 and r.json()["error"].startswith(field + ":"), bad
    r = await server.http.patch("/api/v1/admin/gateways/42", headers=bearer(admin), json={"priority": 1})
    assert r.status_code == 404
    r = await server.http.get("/api/v1/admin/gateways/42", headers=bearer(admin))
    assert r.status_code == 404


async def test_stats_have_the_seed_shape(server):
    admin = server.client_key("admin")
    client = server.client_key("sms")
    key = await server.register("dev-1")
    await server.register("dev-2")
    await server.http.post("/api/v1/gateway/sms/received", headers=bearer(key),
                           json={"sender": "+14155552671", "message": "in"})
    async with phone(server, key) as p:
        sent = await server.send(client)
        await server.send(client)
        sms = await p.next_sms()
        await p.report(sms["message_id"], "delivered")
        await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE status = 'delivered'"))
        stats = (await server.http.get("/api/v1/admin/stats", headers=bearer(admin))).json()
    assert set(stats) == {"gateways", "messages", "otp", "timestamp"}
    assert stats["gateways"] == {"total": 2, "active": 2, "online": 1, "offline": 1}
    assert stats["messages"] == {"total_sent": 1, "total_received": 1, "sent_today": 1, "received_today": 1,
                                 "total_today": 2, "pending": 1, "failed_today": 0}
    assert stats["otp"] == {"sent_today": 0, "verified_today": 0, "verification_rate": 0}
    assert stats["timestamp"].endswith("Z")
    assert sent["message_id"]
