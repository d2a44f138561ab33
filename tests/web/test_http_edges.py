"""What every endpoint shares: JSON errors, health, CORS, OpenAPI."""


async def test_unknown_route_is_404_json(server):
    r = await server.http.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "Not found"}


async def test_wrong_method_is_405_json(server):
    r = await server.http.get("/api/v1/sms/send")
    assert r.status_code == 405 and r.json() == {"error": "Method not allowed"}
    assert "POST" in r.headers["Allow"]


async def test_up_is_200_when_the_database_answers(server):
    r = await server.http.get("/up")
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_up_is_503_when_the_database_does_not(server):
    server.node.store.pool.close()  # the database becomes unreachable for this node
    r = await server.http.get("/up")
    assert r.status_code == 503 and "error" in r.json()


async def test_cors_preflight_and_headers(server):
    r = await server.http.options("/api/v1/sms/send", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    r = await server.http.get("/up", headers={"Origin": "https://app.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_a_request_without_origin_gets_no_cors_headers_but_varies_on_origin(server):
    r = await server.http.get("/up")
    assert r.status_code == 200
    assert not any(h.lower().startswith("access-control-") for h in r.headers)
    assert "Origin" in r.headers["Vary"]  # a shared cache must not serve it to a browser's request
    r = await server.http.get("/up", headers={"Origin": "https://app.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_with_an_origin_list(database_url):
    from tests.conftest import clean, running_node
    clean(database_url)
    async with running_node(database_url, ALLOWED_ORIGINS="https://ok.example") as node:
        r = await node.http.get("/up", headers={"Origin": "https://ok.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "https://ok.example"
        r = await node.http.get("/up", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_openapi_describes_every_endpoint_with_its_errors(server):
    spec = (await server.http.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    for path, method in [("/api/v1/gateway/register", "post"), ("/api/v1/gateway/heartbeat", "post"),
                         ("/api/v1/gateway/sms/received", "post"), ("/api/v1/gateway/sms/status", "post"),
                         ("/api/v1/sms/send", "post"), ("/api/v1/sms/status/{message_id}", "get"),
                         ("/api/v1/sms/received", "get"), ("/api/v1/admin/gateways", "get"),
                         ("/api/v1/admin/gateways/{gateway_id}/toggle", "post"), ("/api/v1/admin/stats", "get")]:
        assert method in paths[path], path
    send = paths["/api/v1/sms/send"]["post"]
    assert {"202", "400", "401", "403", "413", "422", "429"} <= set(send["responses"])
    schema = spec["components"]["schemas"]["SendRequest"]
    assert set(schema["required"]) == {"to", "message"}
    assert schema["properties"]["message"]["maxLength"] == 1600
    docs = await server.http.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
