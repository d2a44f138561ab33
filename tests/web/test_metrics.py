"""`GET /metrics`: what a Prometheus scrape of a real node shows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import NodeMetrics
from config import ConfigError, load_settings
from supervisor import NodeDown, supervise
from tests.conftest import clean, node_env, phone, running_node, wait_for

METRIC_NAMES = (
    "smsgw_messages_total", "smsgw_dispatch_latency_seconds", "smsgw_queue_depth", "smsgw_gateways_connected",
    "smsgw_webhook_deliveries_total", "smsgw_otp_sends_total", "smsgw_otp_verifies_total",
    "smsgw_http_requests_total", "smsgw_actor_restarts_total",
)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def scrape(server, **headers: str) -> str:
    r = await server.http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return r.text


async def test_metrics_answer_prometheus_text_with_every_metric_and_no_key(server):
    r = await server.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    for name in METRIC_NAMES:
        assert f"# HELP {name} " in r.text, name
    assert value(r.text, "smsgw_messages_total", direction="outbound", status="delivered") == 0


async def test_http_requests_are_counted_by_route_not_raw_path(server):
    key = server.client_key("sms")
    for message_id in ("msg_one", "msg_two"):
        r = await server.http.get(f"/api/v1/sms/status/{message_id}", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 404
    assert (await server.http.get("/no/such/page")).status_code == 404
    assert (await server.http.get("/api/v1/admin/stats")).status_code == 401
    text = await scrape(server)
    assert value(text, "smsgw_http_requests_total", route="/api/v1/sms/status/<message_id>", method="GET",
                 status="404") == 2
    assert value(text, "smsgw_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert value(text, "smsgw_http_requests_total", route="/api/v1/admin/stats", method="GET", status="401") == 1
    assert "msg_one" not in text and "/no/such/page" not in text


async def test_a_message_life_shows_in_the_counters_and_latency(server):
    key = server.client_key("sms")
    gw_key = await server.register("metrics-phone")
    async with phone(server, gw_key) as p:
        await wait_for(lambda: server.node.gateways.online_ids())
        assert value(await scrape(server), "smsgw_gateways_connected") == 1
        sent = await server.send(key)
        sms = await p.next_sms()
        await p.report(sms["message_id"], "sent")
        await p.report(sms["message_id"], "delivered")
        await p.report(sms["message_id"], "delivered")  # a repeat changes nothing and is not counted
        await p.perform("message_received", sender="+14155550100", message="hi back",
                        timestamp="2025-10-19T10:30:00Z")
        await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE direction = 'inbound'"))
        await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE message_id = %s AND status = 'delivered'",
                                          (sent["message_id"],)))
        text = await scrape(server)
    for status, expected in (("dispatched", 1), ("sent", 1), ("delivered", 1), ("failed", 0)):
        assert value(text, "smsgw_messages_total", direction="outbound", status=status) == expected, status
    assert value(text, "smsgw_messages_total", direction="inbound", status="received") == 1
    assert value(text, "smsgw_dispatch_latency_seconds_count") == 1
    assert 0 < value(text, "smsgw_dispatch_latency_seconds_sum") < 5
    await wait_for(lambda: not server.node.gateways.online_ids())
    assert value(await scrape(server), "smsgw_gateways_connected") == 0


async def test_a_bulk_send_and_a_burst_of_reports_are_counted_per_message(server):
    key = server.client_key("sms")
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    r = await server.http.post("/api/v1/sms/send_bulk", headers={"Authorization": f"Bearer {key}"}, json={
        "messages": [{"to": "+14155552671", "message": f"m{i}"} for i in range(3)]
        + [{"to": "+14155552671", "message": "later", "send_at": tomorrow}, {"to": "nope", "message": "x"}]})
    assert r.status_code == 202 and [e["index"] for e in r.json()["errors"]] == [4], r.text
    text = await scrape(server)
    assert value(text, "smsgw_messages_total", direction="outbound", status="queued") == 3
    assert value(text, "smsgw_messages_total", direction="outbound", status="scheduled") == 1
    gw_key = await server.register("metrics-burst")
    async with phone(server, gw_key) as p:
        ids = [(await p.next_sms())["message_id"] for _ in range(3)]
        for message_id in ids:  # one burst: sent twice over, then delivered
            await p.report(message_id, "sent")
            await p.report(message_id, "sent")
        for message_id in ids:
            await p.report(message_id, "delivered")
        await wait_for(lambda: len(server.sql("SELECT 1 FROM messages WHERE status = 'delivered'")) == 3)
        await wait_for(lambda: server.node.gateways.get(p_gateway_id(server, "metrics-burst")).in_flight == {})
        text = await scrape(server)
    assert value(text, "smsgw_messages_total", direction="outbound", status="sent") == 3
    assert value(text, "smsgw_messages_total", direction="outbound", status="delivered") == 3


def p_gateway_id(server, device_id: str) -> int:
    return server.sql("SELECT id FROM gateways WHERE device_id = %s", (device_id,))[0]["id"]


async def test_queue_depth_follows_messages_waiting_for_a_gateway(server):
    key = server.client_key("sms")
    for _ in range(3):
        await server.send(key)
    with trio.fail_after(10):
        while value(await scrape(server), "smsgw_queue_depth") != 3:
            await trio.sleep(0.2)  # the scheduler's tick refreshes it every 2 s


async def test_metrics_token_is_required_when_set(database_url):
    clean(database_url)
    token = "scrape-token-0123456789"
    async with running_node(database_url, METRICS_TOKEN=token) as server:
        missing = await server.http.get("/metrics")
        assert missing.status_code == 401
        assert missing.json() == {"error": "Missing or wrong metrics token: send Authorization: Bearer <METRICS_TOKEN>"}
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await server.http.get("/metrics", headers={"Authorization": "Bearer scrape-token-wrong-000000"})
        assert wrong.status_code == 401
        assert "smsgw_queue_depth" in await scrape(server, Authorization=f"Bearer {token}")


@pytest.mark.parametrize("token", ["short", "has spaces in the middle of it"])
def test_a_weak_metrics_token_is_a_configuration_error(database_url, token):
    with pytest.raises(ConfigError) as caught:
        load_settings(node_env(database_url, METRICS_TOKEN=token))
    assert caught.value.variable == "METRICS_TOKEN"


async def test_actor_restarts_are_counted(autojump_clock):
    metrics = NodeMetrics()
    crashes = 0

    async def flaky() -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError("boom")

    with pytest.raises(NodeDown):
        await supervise("flaky", flaky, max_restarts=2, window=60, on_restart=metrics.actor_restarted)
    assert crashes == 3
    assert metrics.registry.get_sample_value("smsgw_actor_restarts_total", {"actor": "flaky"}) == 2


def test_methods_for_the_webhook_and_otp_actors_count():
    metrics = NodeMetrics()
    metrics.webhook_delivery("delivered")
    metrics.webhook_delivery("dead")
    metrics.otp_sent()
    metrics.otp_verified("verified")
    metrics.otp_verified("invalid")
    metrics.accepted("scheduled", 2)
    get = metrics.registry.get_sample_value
    assert get("smsgw_webhook_deliveries_total", {"outcome": "delivered"}) == 1
    assert get("smsgw_webhook_deliveries_total", {"outcome": "failed"}) == 0
    assert get("smsgw_webhook_deliveries_total", {"outcome": "dead"}) == 1
    assert get("smsgw_otp_sends_total") == 1
    assert get("smsgw_otp_verifies_total", {"result": "invalid"}) == 1
    assert get("smsgw_messages_total", {"direction": "outbound", "status": "scheduled"}) == 2


def test_two_nodes_in_one_process_keep_separate_counts():
    first, second = NodeMetrics(), NodeMetrics()
    first.otp_sent()
    assert second.registry.get_sample_value("smsgw_otp_sends_total") == 0
