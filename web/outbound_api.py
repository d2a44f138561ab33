"""Campaigns and follow-up: bulk send, cancel, and a client's own outbound messages."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from quart import Blueprint, current_app, g

from store.messages import STATUS_FIELDS
from store.outbox import iso
from store.sends import SendItem
from web.auth import require_client
from web.errors import ApiError
from web.models import SendRequest, UtcDatetime, _Response
from web.openapi import documented
from web.requests import page_count, parse_query, read_json_bytes, validation_error
from web.sms_api import _accept, _idempotency, new_message

__all__ = ["blueprint", "MAX_BULK"]

blueprint = Blueprint("outbound", __name__, url_prefix="/api/v1/sms")
MAX_BULK = 1000
BULK_BYTES = 1024 * 1024


class BulkRequest(BaseModel):
    """Either `messages` (one entry each) or `to` + `message` (one text to many numbers)."""

    model_config = ConfigDict(extra="ignore")
    messages: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_BULK)
    to: list[Any] | None = Field(default=None, max_length=MAX_BULK)
    message: str | None = None
    priority: Literal["high", "normal", "low"] | None = None
    ttl_seconds: int | None = None
    reference: str | None = None
    send_at: str | None = None


class BulkResponse(_Response):
    success: bool
    accepted: int
    rejected: int
    results: list[dict[str, Any]]
    errors: list[dict[str, Any]]


class OutboundQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reference: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    status: Literal["scheduled", "queued", "dispatched", "sent", "delivered", "failed", "cancelled"] | None = None
    since: UtcDatetime | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    page: Annotated[int, Field(ge=1, le=1_000_000)] = 1


def _node():
    return current_app.config["NODE"]


@blueprint.post("/send_bulk")
@documented(summary="Send up to 1,000 SMS in one request (valid entries are accepted, the others listed)",
            body=BulkRequest, response=BulkResponse, status=202, errors=(409, 503), tag="sms")
async def send_bulk():
    key = await require_client("sms")
    raw = await read_json_bytes(BULK_BYTES)
    entries = _entries(raw)
    node = _node()
    context = {"region": node.settings.default_country_code}
    valid, errors = [], []
    for index, entry in enumerate(entries):
        try:
            body = SendRequest.model_validate_json(json.dumps(entry), strict=True, context=context)
            valid.append((index, new_message(body, key.id, node.settings.message_ttl_seconds,
                                             default_priority="low")))
        except ValidationError as exc:
            errors.append({"index": index, "error": validation_error(exc).message})
        except ApiError as exc:
            errors.append({"index": index, "error": exc.message})
    if not valid:
        raise ApiError(422, "messages: no valid entry", extra={"errors": errors})
    indexes = [i for i, _ in valid]

    def answer(rows: list[dict]) -> tuple[dict, int]:
        results: list[dict] = [{"index": e["index"], "status": "rejected", "error": e["error"]} for e in errors]
        results += [{"index": i, "message_id": r["message_id"], "status": r["status"], "segments": r["segments"]}
                    for i, r in zip(indexes, rows)]
        results.sort(key=lambda r: r["index"])
        return {"success": True, "accepted": len(rows), "rejected": len(errors), "results": results,
                "errors": errors}, 202

    item = SendItem(key_id=key.id, messages=tuple(m for _, m in valid), answer=answer, **await _idempotency())
    body, status = await _accept(item)
    return body, status, g.get("rate_headers", {})


def _entries(raw: bytes) -> list[dict]:
    """The bulk envelope as a list of single-send entries; 400/422 with nothing stored."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "Malformed JSON body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "JSON body must be an object")
    try:
        envelope = BulkRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    shared = {k: v for k, v in data.items() if k in ("priority", "ttl_seconds", "reference", "send_at")}
    if envelope.messages is not None:
        if envelope.to is not None:
            raise ApiError(422, "messages: give either messages or to, not both")
        return [{**shared, **entry} for entry in envelope.messages]
    if envelope.to is None:
        raise ApiError(422, "messages: Field required (or to and message)")
    if envelope.message is None:
        raise ApiError(422, "message: Field required with to")
    return [{**shared, "to": to, "message": envelope.message} for to in envelope.to]


@blueprint.post("/<message_id>/cancel")
@documented(summary="Cancel a message not yet dispatched", errors=(404, 409), tag="sms")
async def cancel(message_id: str):
    key = await require_client("sms")
    outcome = await _node().store.run(_cancel, message_id, key.id, key.is_admin)
    if outcome is None:
        raise ApiError(404, "Message not found")
    if outcome != "cancelled":
        raise ApiError(409, f"Message is already {outcome} and can no longer be cancelled")
    return {"success": True, "message_id": message_id, "status": "cancelled"}, 200, g.get("rate_headers", {})


def _cancel(conn, message_id: str, key_id: int, admin: bool) -> str | None:
    row = conn.execute(
        "SELECT id, status, api_key_id FROM messages WHERE message_id = %s AND direction = 'outbound' FOR UPDATE",
        (message_id,),
    ).fetchone()
    if row is None or (row["api_key_id"] != key_id and not admin):
        return None
    if row["status"] not in ("scheduled", "queued"):
        return row["status"]
    conn.execute("UPDATE messages SET status = 'cancelled', updated_at = now() WHERE id = %s", (row["id"],))
    return "cancelled"


@blueprint.get("")
@documented(summary="This key's outbound messages, newest first", query=OutboundQuery, tag="sms")
async def list_outbound():
    key = await require_client("sms")
    query = parse_query(OutboundQuery)
    rows, total = await _node().store.run(_list, key.id, query)
    return {"messages": [_status_json(r) for r in rows], "total": total, "page": query.page,
            "pages": page_count(total, query.limit)}, 200, g.get("rate_headers", {})


def _list(conn, key_id: int, query: OutboundQuery) -> tuple[list[dict], int]:
    where, params = ["direction = 'outbound'", "api_key_id = %s"], [key_id]
    for column, value in (("reference", query.reference), ("status", query.status)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if query.since is not None:
        where.append("created_at > %s")
        params.append(query.since)
    clause = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM messages WHERE {clause}", params).fetchone()["n"]
    rows = conn.execute(f"SELECT {STATUS_FIELDS} FROM messages WHERE {clause} ORDER BY id DESC LIMIT %s OFFSET %s",
                        [*params, query.limit, (query.page - 1) * query.limit]).fetchall()
    return rows, total


def _status_json(row: dict) -> dict:
    return {"message_id": row["message_id"], "to": row["phone_number"], "status": row["status"],
            "segments": row["segments"], "reference": row["reference"], "send_at": iso(row["send_at"]),
            "sent_at": iso(row["sent_at"]), "delivered_at": iso(row["delivered_at"]),
            "failed_at": iso(row["failed_at"]), "error_message": row["error_message"],
            "created_at": iso(row["created_at"])}
