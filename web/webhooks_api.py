"""Webhook management (client key with the `sms` scope): create, list, change, delete, read
deliveries, redeliver, ping.

A key sees and manages only its own webhooks; an admin key sees all of them. Another key's
webhook or delivery is a 404, the same answer as one that does not exist. The secret is
stored to sign deliveries and never shown again: answers carry `has_secret`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from quart import Blueprint, current_app, g

from store import webhooks as webhooks_store
from store.keys import ApiKey
from store.outbox import EVENTS, iso
from web.auth import require_client
from web.errors import ApiError
from web.openapi import documented
from web.requests import page_count, parse_body, parse_query

__all__ = ["blueprint", "WebhookCreate", "WebhookPatch", "webhook_json", "delivery_json"]

blueprint = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks")


def _url(value: str) -> str:
    split = urlsplit(value)
    if split.scheme not in ("http", "https"):
        raise ValueError("must be an http or https URL")
    if not split.hostname:
        raise ValueError("must name a host")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain spaces")
    try:
        split.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("has a malformed port") from None
    return value


def _events(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("must list at least one event")
    for name in value:
        if name not in EVENTS:
            raise ValueError(f"unknown event {name!r}; expected some of {', '.join(EVENTS)}")
    if len(set(value)) != len(value):
        raise ValueError("must not list an event twice")
    return value


WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_url)]
Events = Annotated[list[str], AfterValidator(_events)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256)]
Description = Annotated[str, StringConstraints(max_length=500)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class WebhookCreate(_Request):
    url: WebhookUrl
    events: Events = Field(description=f"Any of: {', '.join(EVENTS)}")
    secret_key: Secret | None = Field(None, description="Signs each delivery (X-Webhook-Signature); never shown")
    active: bool = True
    description: Description | None = None


class WebhookPatch(_Request):
    """Absent fields stay as they are; null clears secret_key or description (and is a 422
    for url, events and active)."""
    url: WebhookUrl | None = None
    events: Events | None = None
    secret_key: Secret | None = Field(None, description="null removes the secret (deliveries go unsigned)")
    active: bool | None = None
    description: Description | None = None


class DeliveriesQuery(_Request):
    model_config = ConfigDict(strict=False, extra="ignore")
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    page: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    active: bool
    description: str | None
    has_secret: bool
    created_at: str
    updated_at: str


class WebhooksResponse(BaseModel):
    webhooks: list[WebhookOut]
    total: int


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    event_id: str
    event: str
    status: str = Field(description="pending, delivered or dead")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None = Field(description="null unless pending")
    created_at: str
    delivered_at: str | None


class DeliveriesResponse(BaseModel):
    deliveries: list[DeliveryOut]
    total: int
    page: int
    pages: int


class QueuedResponse(BaseModel):
    success: bool
    delivery: DeliveryOut


def webhook_json(row: dict) -> dict:
    return {"id": row["id"], "url": row["url"], "events": list(row["events"]), "active": row["active"],
            "description": row["description"], "has_secret": row["secret_key"] is not None,
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}


def delivery_json(row: dict) -> dict:
    return {"id": row["id"], "webhook_id": row["webhook_id"], "event_id": row["event_id"],
            "event": row["event"], "status": row["status"], "attempts": row["attempts"],
            "last_status_code": row["last_status_code"], "last_error": row["last_error"],
            "next_attempt_at": iso(row["next_attempt_at"]) if row["status"] == "pending" else None,
            "created_at": iso(row["created_at"]), "delivered_at": iso(row["delivered_at"])}


def _node():
    return current_app.config["NODE"]


def _owner(key: ApiKey) -> int | None:
    return None if key.is_admin else key.id


async def _store(fn, *args, **kwargs):
    """Run a store call, turning its domain errors into answers."""
    try:
        return await _node().store.run(fn, *args, **kwargs)
    except webhooks_store.NotFound:
        raise ApiError(404, "Webhook not found") from None
    except webhooks_store.StillPending:
        raise ApiError(409, "Delivery is still pending; it will be retried on its own") from None
    except webhooks_store.WebhookDisabled:
        raise ApiError(409, "Webhook is disabled; enable it first") from None


def _woken() -> None:
    if _node().webhooks is not None:
        _node().webhooks.wake()


@blueprint.post("")
@documented(summary="Create a webhook", body=WebhookCreate, response=WebhookOut, status=201, tag="webhooks")
async def create():
    key = await require_client("sms")
    body = await parse_body(WebhookCreate)
    row = await _store(webhooks_store.create, key.id, body.model_dump())
    return webhook_json(row), 201, g.get("rate_headers", {})


@blueprint.get("")
@documented(summary="Webhooks of this key (all of them for an admin key)", response=WebhooksResponse,
            tag="webhooks")
async def list_all():
    key = await require_client("sms")
    rows = await _store(webhooks_store.list_webhooks, _owner(key))
    return {"webhooks": [webhook_json(r) for r in rows], "total": len(rows)}, 200, g.get("rate_headers", {})


@blueprint.get("/<int:webhook_id>")
@documented(summary="One webhook", response=WebhookOut, errors=(404,), tag="webhooks")
async def get_one(webhook_id: int):
    key = await require_client("sms")
    row = await _store(webhooks_store.get, webhook_id, _owner(key))
    return webhook_json(row), 200, g.get("rate_headers", {})


@blueprint.patch("/<int:webhook_id>")
@documented(summary="Change a webhook's url, events, secret, active flag or description",
            body=WebhookPatch, response=WebhookOut, errors=(404,), tag="webhooks")
async def patch(webhook_id: int):
    key = await require_client("sms")
    body = await parse_body(WebhookPatch)
    changes = body.model_dump(exclude_unset=True)
    for name in ("url", "events", "active"):
        if name in changes and changes[name] is None:
            raise ApiError(422, f"{name}: may not be null")
    row = await _store(webhooks_store.update, webhook_id, _owner(key), changes)
    return webhook_json(row), 200, g.get("rate_headers", {})


@blueprint.delete("/<int:webhook_id>")
@documented(summary="Delete a webhook and its deliveries", errors=(404,), tag="webhooks")
async def delete(webhook_id: int):
    key = await require_client("sms")
    await _store(webhooks_store.delete, webhook_id, _owner(key))
    return {"success": True}, 200, g.get("rate_headers", {})


@blueprint.get("/<int:webhook_id>/deliveries")
@documented(summary="A webhook's deliveries, newest first", query=DeliveriesQuery, response=DeliveriesResponse,
            errors=(404,), tag="webhooks")
async def deliveries(webhook_id: int):
    key = await require_client("sms")
    query = parse_query(DeliveriesQuery)
    rows, total = await _store(webhooks_store.list_deliveries, webhook_id, _owner(key),
                               limit=query.limit, page=query.page)
    return {"deliveries": [delivery_json(r) for r in rows], "total": total, "page": query.page,
            "pages": page_count(total, query.limit)}, 200, g.get("rate_headers", {})


@blueprint.post("/deliveries/<int:delivery_id>/redeliver")
@documented(summary="Queue a delivered or dead delivery again (a new row, same event_id and payload)",
            response=QueuedResponse, status=202, errors=(404, 409), tag="webhooks")
async def redeliver(delivery_id: int):
    key = await require_client("sms")
    try:
        row = await _store(webhooks_store.redeliver, delivery_id, _owner(key))
    except ApiError as exc:
        if exc.status == 404:
            raise ApiError(404, "Delivery not found") from None
        raise
    _woken()
    return {"success": True, "delivery": delivery_json(row)}, 202, g.get("rate_headers", {})


@blueprint.post("/<int:webhook_id>/test")
@documented(summary="Queue a ping event to this webhook only", response=QueuedResponse, status=202,
            errors=(404, 409), tag="webhooks")
async def test(webhook_id: int):
    key = await require_client("sms")
    node = _node()
    now = node.webhooks.now() if node.webhooks is not None else datetime.now(timezone.utc)
    row = await _store(webhooks_store.queue_ping, webhook_id, _owner(key), now)
    _woken()
    return {"success": True, "delivery": delivery_json(row)}, 202, g.get("rate_headers", {})
