"""Gateway device APIs: register, heartbeat, inbound SMS, delivery reports, pending pull."""

from __future__ import annotations

from datetime import datetime, timezone

from quart import Blueprint, current_app, request

from store import gateways as gateways_store
from store import keys as keys_store
from store import messages as messages_store
from store.outbox import iso
from web.auth import bearer_key, require_gateway
from web.errors import ApiError
from web.models import (HeartbeatRequest, HeartbeatResponse, InboundRequest, InboundResponse,
                        RegisterRequest, RegisterResponse, StatusReportRequest, SuccessResponse)
from web.openapi import documented
from web.requests import parse_body

__all__ = ["blueprint"]

blueprint = Blueprint("gateway", __name__, url_prefix="/api/v1/gateway")


def _node():
    return current_app.config["NODE"]


@blueprint.post("/register")
@documented(summary="Register an Android device as a gateway (or rotate its key)", body=RegisterRequest,
            response=RegisterResponse, status=201, auth=None, errors=(409, 429), tag="gateway")
async def register():
    node = _node()
    headers = await node.limits.check_register(request.remote_addr or "unknown")
    body = await parse_body(RegisterRequest)
    presented = bearer_key()
    try:
        gateway, key = await node.store.run(gateways_store.register, body.device_id, body.name, presented)
    except gateways_store.DeviceTaken:
        raise ApiError(409, "device_id is already registered; re-register with that gateway's key to rotate it",
                       headers=headers) from None
    if presented is not None:
        # A rotation revoked the key presented: this node forgets it now, the others when the
        # commit's notification reaches them (actors/key_cache.py).
        node.keys.invalidate(keys_store.digest_of(presented))
    if node.gateways is not None:
        node.gateways.key_rotated(gateway["id"])
    if node.backplane is not None:
        await node.backplane.key_rotated(gateway["id"])  # a socket on another node, opened with the old key
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
    return {
        "success": True,
        "api_key": key,
        "device_id": gateway["device_id"],
        "websocket_url": node.settings.websocket_url(request.host, scheme),
    }, 201, headers


@blueprint.post("/heartbeat")
@documented(summary="Heartbeat: battery, signal and queue; marks the gateway online",
            body=HeartbeatRequest, response=HeartbeatResponse, auth="gateway", tag="gateway")
async def heartbeat():
    _, gateway = await require_gateway()
    body = await parse_body(HeartbeatRequest)
    node = _node()
    pending = await node.store.run(
        gateways_store.heartbeat, gateway["id"], battery_level=body.battery_level,
        signal_strength=body.signal_strength, messages_in_queue=body.messages_in_queue)
    if node.gateways is not None:
        node.gateways.heartbeat(gateway["id"], body.battery_level, body.signal_strength, body.messages_in_queue)
    return {"success": True, "pending_messages": pending}


@blueprint.post("/sms/received")
@documented(summary="Report an SMS the phone received", body=InboundRequest, response=InboundResponse,
            auth="gateway", tag="gateway")
async def sms_received():
    _, gateway = await require_gateway()
    body = await parse_body(InboundRequest)
    received_at = body.timestamp or datetime.now(timezone.utc)
    node = _node()
    message_id, new = await node.store.run(messages_store.store_inbound, gateway, body.sender,
                                           body.message, received_at)
    if node.metrics is not None:
        node.metrics.received(new)
    return {"success": True, "message_id": message_id}


@blueprint.post("/sms/status")
@documented(summary="Report the delivery status of an outbound SMS", body=StatusReportRequest,
            response=SuccessResponse, auth="gateway", errors=(404,), tag="gateway")
async def sms_status():
    _, gateway = await require_gateway()
    body = await parse_body(StatusReportRequest)
    node = _node()
    try:
        await node.dispatcher.report(gateway, body.message_id, body.status, body.error_message)
    except messages_store.UnknownMessage:
        raise ApiError(404, "Message not found for this gateway") from None
    return {"success": True}


@blueprint.get("/messages/pending")
@documented(summary="Messages assigned to this gateway and not yet sent (fallback without a socket)",
            auth="gateway", tag="gateway")
async def pending():
    _, gateway = await require_gateway()
    rows = await _node().store.run(_assigned, gateway["id"])
    return {"messages": [{"action": "send_sms", "message_id": r["message_id"], "recipient": r["phone_number"],
                          "message": r["body"], "segments": r["segments"],
                          "dispatched_at": iso(r["dispatched_at"])} for r in rows]}


def _assigned(conn, gateway_id: int) -> list[dict]:
    return conn.execute(
        "SELECT message_id, phone_number, body, segments, dispatched_at FROM messages"
        " WHERE gateway_id = %s AND status = 'dispatched' ORDER BY priority, id LIMIT 100",
        (gateway_id,),
    ).fetchall()
