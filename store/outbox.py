"""The webhook outbox: an event is written in the transaction of the change that causes it.

Outbound message events go to the webhooks of the key that sent the message and to those of
admin keys; inbound and gateway events go to every subscribed webhook.
"""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg
from psycopg.types.json import Jsonb

from store.keys import new_public_id

__all__ = ["EVENTS", "WAKE_CHANNEL", "emit", "iso"]

EVENTS = ("sms_received", "sms_sent", "sms_delivered", "sms_failed", "gateway_online", "gateway_offline")
WAKE_CHANNEL = "smsgw_webhooks"  # NOTIFY at commit wakes every node's webhook actor


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`, to the second's microsecond precision trimmed to seconds."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(conn: psycopg.Connection, event: str, payload: dict, *, owner_key_id: int | None = None) -> int:
    """Queue `event` for every active webhook subscribed to it; return how many."""
    event_id = new_public_id("evt_")
    body = {"event": event, "event_id": event_id,
            "timestamp": iso(datetime.now(timezone.utc)), **payload}
    owner_filter = ""
    params: list[object] = [event_id, event, Jsonb(body), event]
    if owner_key_id is not None:
        owner_filter = (" AND (w.api_key_id = %s OR EXISTS (SELECT 1 FROM api_keys k"
                        " WHERE k.id = w.api_key_id AND 'admin' = ANY(k.scopes)))")
        params.append(owner_key_id)
    cur = conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event, payload)"
        " SELECT w.id, %s, %s, %s FROM webhooks w WHERE w.active AND %s = ANY(w.events)" + owner_filter,
        params,
    )
    if cur.rowcount:
        conn.execute("SELECT pg_notify(%s, '')", (WAKE_CHANNEL,))
    return cur.rowcount
