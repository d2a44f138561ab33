"""Key lookups are cached per node and dropped at once when a key changes anywhere."""


from tests.conftest import wait_for


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def test_repeated_requests_hit_the_cache(server):
    key = server.client_key("sms")
    await wait_for(lambda: server.node.keys._listening)
    for _ in range(5):
        assert (await server.http.get("/api/v1/sms/received", headers=bearer(key))).status_code == 200
    assert server.node.keys.misses == 1 and server.node.keys.hits == 4


async def test_revoking_a_cached_key_is_seen_by_the_next_request(server):
    key = server.client_key("sms")
    await wait_for(lambda: server.node.keys._listening)
    assert (await server.http.get("/api/v1/sms/received", headers=bearer(key))).status_code == 200
    server.sql("UPDATE api_keys SET revoked_at = now()")
    await wait_for(lambda: not server.node.keys._entries, timeout=2)
    assert (await server.http.get("/api/v1/sms/received", headers=bearer(key))).status_code == 401


async def test_scope_change_is_seen_at_once(server):
    key = server.client_key("sms", "admin")
    await wait_for(lambda: server.node.keys._listening)
    assert (await server.http.get("/api/v1/admin/stats", headers=bearer(key))).status_code == 200
    server.sql("UPDATE api_keys SET scopes = '{sms}'")
    await wait_for(lambda: not server.node.keys._entries, timeout=2)
    assert (await server.http.get("/api/v1/admin/stats", headers=bearer(key))).status_code == 403


async def test_without_its_listener_the_cache_is_bypassed(server):
    key = server.client_key("sms")
    await wait_for(lambda: server.node.keys._listening)
    await server.http.get("/api/v1/sms/received", headers=bearer(key))
    server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'smsgw-keys'")
    await wait_for(lambda: not server.node.keys._listening, timeout=5)
    assert not server.node.keys._entries
    misses = server.node.keys.misses
    await server.http.get("/api/v1/sms/received", headers=bearer(key))
    await server.http.get("/api/v1/sms/received", headers=bearer(key))
    assert server.node.keys.misses == misses + 2  # both went to the database (it reconnects after 5 s)
