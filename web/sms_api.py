"""Client application APIs: send an SMS, read its status, read inbound SMS."""

from __future__ import annotations

import collections
import hashlib
from datetime import datetime, timedelta, timezone

import trio

from quart import Blueprint, current_app, g, request

from actors.segments import MAX_SEGMENTS, segments_for
from store import messages as messages_store
from store.idempotency import IdempotencyConflict
from store.sends import SendItem
from store.messages import NewMessage
from store.outbox import iso
from web.auth import require_client
from web.errors import ApiError
from web.models import ReceivedQuery, ReceivedResponse, SendRequest, SendResponse, StatusResponse
from web.openapi import documented
from web.requests import page_count, parse_body, parse_query

__all__ = ["accept", "blueprint", "idempotency_fields", "new_message", "single_answer"]

blueprint = Blueprint("sms", __name__, url_prefix="/api/v1/sms")
PRIORITIES = {"high": 0, "normal": 1, "low": 2}


def _node():
    return current_app.config["NODE"]


MAX_SCHEDULE_AHEAD = timedelta(days=30)


def new_message(body: SendRequest, key_id: int, default_ttl: int, *, default_priority: str = "normal") -> NewMessage:
    """The row to insert for a validated send request; 422 past MAX_SEGMENTS or a `send_at`
    more than 30 days ahead. A `send_at` already past means now."""
    seg = segments_for(body.message)
    if seg.segments > MAX_SEGMENTS:
        raise ApiError(422, f"message: {seg.segments} segments ({seg.encoding}); at most {MAX_SEGMENTS} allowed")
    send_at = body.send_at
    if send_at is not None:
        now = datetime.now(timezone.utc)
        if send_at > now + MAX_SCHEDULE_AHEAD:
            raise ApiError(422, "send_at: at most 30 days ahead")
        if send_at <= now:
            send_at = None
    return NewMessage(phone_number=body.to, body=body.message, segments=seg.segments, encoding=seg.encoding,
                      api_key_id=key_id, ttl_seconds=body.ttl_seconds or default_ttl,
                      priority=PRIORITIES[body.priority if "priority" in body.model_fields_set else default_priority], reference=body.reference,
                      send_at=send_at)


@blueprint.post("/send")
@documented(summary="Send an SMS (202 once the message is stored)", body=SendRequest, response=SendResponse,
            status=202, errors=(409, 503), tag="sms")
async def send():
    key = await require_client("sms")
    body = await parse_body(SendRequest)
    node = _node()
    message = new_message(body, key.id, node.settings.message_ttl_seconds)
    answer, status = await _accept(SendItem(key_id=key.id, messages=(message,), answer=single_answer,
                                            **await _idempotency()))
    return answer, status, g.get("rate_headers", {})


def single_answer(rows: list[dict]) -> tuple[dict, int]:
    row = rows[0]
    return {"success": True, "message_id": row["message_id"], "status": row["status"],
            "segments": row["segments"], "encoding": row["encoding"]}, 202


async def _idempotency() -> dict:
    """The request's Idempotency-Key (validated) and the hash of its body."""
    idem = request.headers.get("Idempotency-Key")
    if idem is None:
        return {}
    return idempotency_fields(idem, await request.get_data())


def idempotency_fields(idem: str | None, raw: bytes) -> dict:
    """The SendItem fields of an Idempotency-Key header (validated) and the body it keys."""
    if idem is None:
        return {}
    if not 0 < len(idem) <= 255:
        raise ApiError(422, "Idempotency-Key: must be 1 to 255 characters")
    return {"idem": idem, "request_hash": hashlib.sha256(raw).hexdigest()}


async def _accept(item: SendItem) -> tuple[dict, int]:
    return await accept(_node(), item)


async def accept(node, item: SendItem) -> tuple[dict, int]:
    """Write through the group committer; 202 only once committed. (The committer hands what
    it can to phones at once and wakes the dispatcher for the rest: `build_node`.)"""
    try:
        answer, status = await node.sends.submit(item)
    except IdempotencyConflict:
        raise ApiError(409, "Idempotency-Key was already used with a different request body") from None
    except trio.TooSlowError:
        raise ApiError(503, "Service busy: the message was not accepted", headers={"Retry-After": "2"}) from None
    if status == 202 and node.metrics is not None:
        counts = collections.Counter(result["status"] for result in answer.get("results", [answer])
                                     if "message_id" in result)
        for message_status, n in counts.items():  # a bulk answer has up to 1,000 results
            node.metrics.accepted(message_status, n)
    return answer, status


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
