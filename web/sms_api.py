"""Client application APIs: send an SMS, read its status, read inbound SMS."""

from __future__ import annotations

import hashlib

from quart import Blueprint, current_app, g, request

from actors.segments import MAX_SEGMENTS, segments_for
from store import messages as messages_store
from store.idempotency import IdempotencyConflict, recall, remember
from store.messages import NewMessage
from store.outbox import iso
from web.auth import require_client
from web.errors import ApiError
from web.models import ReceivedQuery, ReceivedResponse, SendRequest, SendResponse, StatusResponse
from web.openapi import documented
from web.requests import page_count, parse_body, parse_query

__all__ = ["blueprint", "new_message"]

blueprint = Blueprint("sms", __name__, url_prefix="/api/v1/sms")
PRIORITIES = {"high": 0, "normal": 1, "low": 2}


def _node():
    return current_app.config["NODE"]


def new_message(body: SendRequest, key_id: int, default_ttl: int, *, priority: str | None = None) -> NewMessage:
    """The row to insert for a validated send request; 422 past MAX_SEGMENTS."""
    seg = segments_for(body.message)
    if seg.segments > MAX_SEGMENTS:
        raise ApiError(422, f"message: {seg.segments} segments ({seg.encoding}); at most {MAX_SEGMENTS} allowed")
    return NewMessage(phone_number=body.to, body=body.message, segments=seg.segments, encoding=seg.encoding,
                      api_key_id=key_id, ttl_seconds=body.ttl_seconds or default_ttl,
                      priority=PRIORITIES[priority or body.priority], reference=body.reference,
                      send_at=body.send_at)


@blueprint.post("/send")
@documented(summary="Send an SMS (202 once the message is stored)", body=SendRequest, response=SendResponse,
            status=202, errors=(409, 503), tag="sms")
async def send():
    key = await require_client("sms")
    raw = await request.get_data()
    body = await parse_body(SendRequest)
    node = _node()
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not (0 < len(idem) <= 255):
        raise ApiError(422, "Idempotency-Key: must be 1 to 255 characters")
    message = new_message(body, key.id, node.settings.message_ttl_seconds)
    request_hash = hashlib.sha256(raw).hexdigest()
    try:
        answer, status = await node.store.run(_send_once, key.id, idem, request_hash, message)
    except IdempotencyConflict:
        raise ApiError(409, "Idempotency-Key was already used with a different request body") from None
    if status == 202:
        node.dispatcher.wake()
    return answer, status, g.get("rate_headers", {})


def _send_once(conn, key_id: int, idem: str | None, request_hash: str, message: NewMessage) -> tuple[dict, int]:
    if idem is not None:
        earlier = recall(conn, key_id, idem, request_hash)
        if earlier is not None:
            return earlier
    row = messages_store.insert_outbound(conn, [message])[0]
    answer = {"success": True, "message_id": row["message_id"], "status": row["status"],
              "segments": row["segments"], "encoding": row["encoding"]}
    if idem is not None:
        remember(conn, key_id, idem, request_hash, 202, answer)
    return answer, 202


@blueprint.get("/status/<message_id>")
@documented(summary="Delivery status of a sent message", response=StatusResponse, errors=(404,), tag="sms")
async def status(message_id: str):
    key = await require_client("sms")
    row = await _node().store.run(messages_store.get_outbound, message_id)
    if row is None or (row["api_key_id"] != key.id and not key.is_admin):
        raise ApiError(404, "Message not found")
    answer = {
        "message_id": row["message_id"], "status": row["status"], "sent_at": iso(row["sent_at"]),
        "delivered_at": iso(row["delivered_at"]), "failed_at": iso(row["failed_at"]),
        "error_message": row["error_message"], "to": row["phone_number"], "segments": row["segments"],
        "encoding": row["encoding"], "attempts": row["attempts"], "reference": row["reference"],
        "created_at": iso(row["created_at"]),
    }
    if row["send_at"] is not None:
        answer["send_at"] = iso(row["send_at"])
    return answer, 200, g.get("rate_headers", {})


@blueprint.get("/received")
@documented(summary="Inbound SMS, newest first", query=ReceivedQuery, response=ReceivedResponse, tag="sms")
async def received():
    await require_client("sms")
    query = parse_query(ReceivedQuery)
    rows, total = await _node().store.run(
        messages_store.list_inbound, phone_number=query.phone_number, since=query.since,
        limit=query.limit, page=query.page)
    return {
        "messages": [{"message_id": r["message_id"], "from": r["phone_number"], "message": r["body"],
                      "received_at": iso(r["received_at"])} for r in rows],
        "total": total, "page": query.page, "pages": page_count(total, query.limit),
    }, 200, g.get("rate_headers", {})
