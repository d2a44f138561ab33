"""Admin APIs (client key with the `admin` scope): gateways with live health, toggle, stats."""

from __future__ import annotations

from datetime import datetime, timezone

from quart import Blueprint, current_app, g

from store import gateways as gateways_store
from store.outbox import iso
from store.stats import system_stats
from web.auth import require_client
from web.errors import ApiError
from web.models import GatewayOut, GatewayPatch, GatewaysQuery, GatewaysResponse, StatsResponse, ToggleResponse
from web.openapi import documented
from web.requests import page_count, parse_body, parse_query

__all__ = ["blueprint", "gateway_json"]

blueprint = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


def _node():
    return current_app.config["NODE"]


def gateway_json(row: dict, live: dict | None) -> dict:
    """The seed's gateway fields, with status and health from the live actor when there is one."""
    live = live or {}
    return {
        "id": row["id"], "device_id": row["device_id"], "name": row["name"],
        "status": "online" if live.get("online") else row["status"],
        "last_heartbeat_at": iso(live.get("last_heartbeat_at") or row["last_heartbeat_at"]),
        "messages_sent_today": row["messages_sent_today"],
        "messages_received_today": row["messages_received_today"],
        "total_messages_sent": row["total_messages_sent"],
        "total_messages_received": row["total_messages_received"],
        "active": row["active"], "priority": row["priority"], "metadata": row["metadata"],
        "created_at": iso(row["created_at"]),
        "connected": bool(live.get("connected")),
        "in_flight": live.get("in_flight", 0),
        "queue_depth": live.get("queue_depth", row["messages_in_queue"] or 0),
        "battery_level": live.get("battery_level", row["battery_level"]),
        "signal_strength": live.get("signal_strength", row["signal_strength"]),
        "send_rate_per_minute": (row["send_rate_per_minute"] if row["send_rate_per_minute"] is not None
                                 else _node().settings.gateway_send_rate_per_minute),
    }


async def _fleet() -> dict[int, dict]:
    """Live snapshots of the gateways connected to any node (the backplane merges them)."""
    node = _node()
    return await node.backplane.fleet_snapshots() if node.backplane is not None else {}


async def _live(gateway_id: int) -> dict | None:
    return (await _fleet()).get(gateway_id)


@blueprint.get("/gateways")
@documented(summary="All gateways, with live status and health", query=GatewaysQuery,
            response=GatewaysResponse, tag="admin")
async def list_gateways():
    await require_client("admin")
    query = parse_query(GatewaysQuery)
    node = _node()
    fleet = await _fleet()
    rows, _ = await node.store.run(gateways_store.list_gateways, active=query.active, limit=10_000)
    views = [gateway_json(r, fleet[r["id"]] if fleet.get(r["id"], {}).get("online") else None) for r in rows]
    if query.status is not None:
        views = [v for v in views if v["status"] == query.status]
    start = (query.page - 1) * query.limit
    return {"gateways": views[start:start + query.limit], "total": len(views), "page": query.page,
            "pages": page_count(len(views), query.limit)}, 200, g.get("rate_headers", {})


@blueprint.get("/gateways/<int:gateway_id>")
@documented(summary="One gateway, with live health", response=GatewayOut, errors=(404,), tag="admin")
async def get_gateway(gateway_id: int):
    await require_client("admin")
    row = await _node().store.run(gateways_store.get, gateway_id)
    if row is None:
        raise ApiError(404, "Gateway not found")
    return gateway_json(row, await _live(gateway_id)), 200, g.get("rate_headers", {})


@blueprint.patch("/gateways/<int:gateway_id>")
@documented(summary="Change a gateway's name, priority, active flag, send rate or metadata",
            body=GatewayPatch, response=GatewayOut, errors=(404,), tag="admin")
async def patch_gateway(gateway_id: int):
    await require_client("admin")
    body = await parse_body(GatewayPatch)
    node = _node()
    row = await node.store.run(gateways_store.update, gateway_id, body.model_dump(exclude_unset=True))
    if row is None:
        raise ApiError(404, "Gateway not found")
    if node.gateways is not None:
        node.gateways.settings_changed(row)
    if node.backplane is not None:
        await node.backplane.gateway_changed(row)  # the node holding its socket applies it too
    node.dispatcher.wake()
    return gateway_json(row, await _live(gateway_id)), 200, g.get("rate_headers", {})


@blueprint.post("/gateways/<int:gateway_id>/toggle")
@documented(summary="Enable or disable a gateway", response=ToggleResponse, errors=(404,), tag="admin")
async def toggle(gateway_id: int):
    await require_client("admin")
    node = _node()
    row = await node.store.run(gateways_store.toggle, gateway_id)
    if row is None:
        raise ApiError(404, "Gateway not found")
    if node.gateways is not None:
        full = await node.store.run(gateways_store.get, gateway_id)
        node.gateways.settings_changed(full)
        if node.backplane is not None:
            await node.backplane.gateway_changed(full)
    node.dispatcher.wake()
    return {"success": True, "gateway": {"id": row["id"], "device_id": row["device_id"],
                                         "active": row["active"]}}, 200, g.get("rate_headers", {})


@blueprint.get("/stats")
@documented(summary="System statistics", response=StatsResponse, tag="admin")
async def stats():
    await require_client("admin")
    node = _node()
    raw = await node.store.run(system_stats)
    gw, counters = raw["gateways"], raw["counters"]
    online = gw["online"]  # gateway actors keep the row's status in step with their sockets
    # ... and a socket on any node that the row does not show yet (it is being written) counts too.
    live = [gid for gid, snapshot in (await _fleet()).items() if snapshot.get("online")]
    if live:
        _, behind = await node.store.run(gateways_store.list_gateways, status="offline", ids=live, limit=1)
        online += behind
    sent_today, received_today = int(gw["sent_today"]), int(gw["received_today"])
    otp_sent, otp_verified = counters.get("otp_sent", 0), counters.get("otp_verified", 0)
    return {
        "gateways": {"total": gw["total"], "active": gw["active"], "online": online,
                     "offline": gw["total"] - online},
        "messages": {"total_sent": int(gw["total_sent"]), "total_received": int(gw["total_received"]),
                     "sent_today": sent_today, "received_today": received_today,
                     "total_today": sent_today + received_today, "pending": raw["pending"],
                     "failed_today": counters.get("sms_failed", 0)},
        "otp": {"sent_today": otp_sent, "verified_today": otp_verified,
                "verification_rate": round(100.0 * otp_verified / otp_sent, 2) if otp_sent else 0},
        "timestamp": iso(datetime.now(timezone.utc)),
    }, 200, g.get("rate_headers", {})
