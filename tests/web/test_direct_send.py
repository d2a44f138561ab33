"""`POST /api/v1/sms/send` answers the same on its direct route (no Origin) as on the Quart
route (a browser's request, with Origin): every status, error text and header, bad input too."""

import json

import pytest

from tests.conftest import clean, running_node

LONG = "x" * 1_601  # 11 GSM-7 segments: past the limit


def cases(client: str, no_scope: str, gateway: str) -> list[tuple[str, dict, bytes]]:
    def auth(key: str) -> dict:
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    good = json.dumps({"to": "+14155552671", "message": "hello"}).encode()
    return [
        ("no key", {"Content-Type": "application/json"}, good),
        ("not a bearer", {"Authorization": "Basic abc", "Content-Type": "application/json"}, good),
        ("unknown key", auth("api_live_nope"), good),
        ("odd prefix", auth("sk_live_123"), good),
        ("gateway key", auth(gateway), good),
        ("no sms scope", auth(no_scope), good),
        ("text body", {**auth(client), "Content-Type": "text/plain"}, good),
        ("json with charset", {**auth(client), "Content-Type": "application/json; charset=utf-8"}, good),
        ("malformed", auth(client), b"{not json"),
        ("array", auth(client), b"[1, 2]"),
        ("empty", auth(client), b""),
        ("no to", auth(client), b'{"message": "hi"}'),
        ("bad number", auth(client), b'{"to": "12", "message": "hi"}'),
        ("number as int", auth(client), b'{"to": 14155552671, "message": "hi"}'),
        ("too many segments", auth(client), json.dumps({"to": "+14155552671", "message": LONG}).encode()),
        ("bad ttl", auth(client), b'{"to": "+14155552671", "message": "hi", "ttl_seconds": 5}'),
        ("far send_at", auth(client), b'{"to": "+14155552671", "message": "hi", "send_at": "2099-01-01T00:00:00Z"}'),
        ("bad priority", auth(client), b'{"to": "+14155552671", "message": "hi", "priority": "urgent"}'),
        ("too large", auth(client), b'{"to": "+14155552671", "message": "' + b"y" * 70_000 + b'"}'),
        ("long idempotency key", {**auth(client), "Idempotency-Key": "k" * 300}, good),
        ("good", auth(client), good),
        ("scheduled", auth(client), b'{"to": "+14155552671", "message": "later", "send_at": "'
         + b"2026-12-31T00:00:00Z" + b'", "priority": "low", "reference": "ref-1"}'),
    ]


def comparable(response) -> tuple:
    body = response.json()
    body.pop("message_id", None)
    headers = {k: v for k, v in response.headers.items()
               if k.lower() in ("content-type", "retry-after") or k.lower().startswith("ratelimit-")}
    headers.pop("ratelimit-remaining", None)  # one request later, one fewer
    headers.pop("ratelimit-reset", None)
    return response.status_code, body, headers


async def test_every_answer_matches_the_quart_route(database_url):
    clean(database_url)
    async with running_node(database_url, RATE_LIMIT_PER_KEY_PER_MINUTE="1000") as node:
        client = node.client_key("sms")
        no_scope = node.client_key("otp")
        gateway = await node.register("direct-gw")
        for name, headers, body in cases(client, no_scope, gateway):
            direct = await node.http.post("/api/v1/sms/send", headers=headers, content=body)
            quart = await node.http.post("/api/v1/sms/send", headers={**headers, "Origin": "https://app.example"},
                                         content=body)
            assert "access-control-allow-origin" in quart.headers  # it did take the Quart route
            assert comparable(direct) == comparable(quart), name
            assert direct.headers["vary"] == "Origin"


async def test_idempotent_repeat_and_conflict_match_too(server):
    key = server.client_key("sms")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-7"}
    first = await server.http.post("/api/v1/sms/send", headers=headers, json={"to": "+14155552671", "message": "a"})
    again = await server.http.post("/api/v1/sms/send", headers={**headers, "Origin": "https://x.example"},
                                   json={"to": "+14155552671", "message": "a"})
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    for origin in ({}, {"Origin": "https://x.example"}):
        conflict = await server.http.post("/api/v1/sms/send", headers={**headers, **origin},
                                          json={"to": "+14155552671", "message": "b"})
        assert conflict.status_code == 409
        assert conflict.json() == {"error": "Idempotency-Key was already used with a different request body"}


@pytest.mark.parametrize("origin", [False, True])
async def test_rate_limit_answers_429_with_its_headers_on_both_routes(database_url, origin):
    clean(database_url)
    async with running_node(database_url, RATE_LIMIT_PER_KEY_PER_MINUTE="2") as node:
        key = node.client_key("sms")
        headers = {"Authorization": f"Bearer {key}", **({"Origin": "https://x.example"} if origin else {})}
        answers = [await node.http.post("/api/v1/sms/send", headers=headers,
                                        json={"to": "+14155552671", "message": "hi"}) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert answers[0].headers["ratelimit-limit"] == "2"
        assert "retry-after" in answers[2].headers and "error" in answers[2].json()


async def test_direct_sends_are_counted_by_route_in_metrics(server):
    key = server.client_key("sms")
    for _ in range(2):
        await server.http.post("/api/v1/sms/send", headers={"Authorization": f"Bearer {key}"},
                               json={"to": "+14155552671", "message": "hi"})
    await server.http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": "hi"})
    text = (await server.http.get("/metrics")).text
    assert 'smsgw_http_requests_total{method="POST",route="/api/v1/sms/send",status="202"} 2.0' in text
    assert 'smsgw_http_requests_total{method="POST",route="/api/v1/sms/send",status="401"} 1.0' in text
