"""The webhook outbox: an event is written in the transaction of the change that causes it.

Outbound message events go to the webhooks of the key that sent the message and to those of
admin keys; inbound and gateway events go to every subscribed webhook.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Sequence

import psycopg
from psycopg.types.json import Jsonb

from store.keys import new_public_id

__all__ = ["EVENTS", "WAKE_CHANNEL", "emit", "emit_many", "iso"]

EVENTS = ("sms_received", "sms_sent", "sms_delivered", "sms_failed", "gateway_online", "gateway_offline")
WAKE_CHANNEL = "smsgw_webhooks"  # NOTIFY at commit wakes every node's webhook actor


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`, to the second's microsecond precision trimmed to seconds."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(conn: psycopg.Connection, event: str, payload: dict, *, owner_key_id: int | None = None) -> int:
    """Queue `event` for every active webhook subscribed to it; return how many."""
    return emit_many(conn, [(event, payload, owner_key_id)])


def emit_many(conn: psycopg.Connection,
              events: Sequence[tuple[str, dict | Callable[[], dict], int | None]]) -> int:
    """Queue each `(event, payload, owner_key_id)` for the active webhooks subscribed to it, in
    one statement; return how many deliveries were queued. A payload may be a function that
    builds it, called only when someone subscribed to the event.

    With an owner key, only that key's webhooks and admin keys' webhooks get the event; with
    none (inbound SMS, gateway events), every subscribed webhook does.
    """
    if not events:
        return 0
    # Most events have no subscriber: find out in one cheap query before building payloads.
    row = conn.execute(
        "SELECT coalesce(array_agg(DISTINCT e), '{}') AS names FROM webhooks, unnest(events) AS e WHERE active"
    ).fetchone()
    wanted = row["names"] if isinstance(row, dict) else row[0]
    events = [e for e in events if e[0] in wanted]
    if not events:
        return 0
    stamp = iso(datetime.now(timezone.utc))
    ids, names, bodies, owners = [], [], [], []
    for event, payload, owner_key_id in events:
        event_id = new_public_id("evt_")
        ids.append(event_id)
        names.append(event)
        if callable(payload):
            payload = payload()
        bodies.append(Jsonb({"event": event, "event_id": event_id, "timestamp": stamp, **payload}))
        owners.append(owner_key_id)
    cur = conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event, payload)"
        " SELECT w.id, e.event_id, e.event, e.payload"
        " FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::bigint[]) AS e(event_id, event, payload, owner)"
        " JOIN webhooks w ON w.active AND e.event = ANY(w.events)"
        " WHERE e.owner IS NULL OR w.api_key_id = e.owner OR EXISTS (SELECT 1 FROM api_keys k"
        " WHERE k.id = w.api_key_id AND 'admin' = ANY(k.scopes))",
        (ids, names, bodies, owners),
    )
    if cur.rowcount:
        conn.execute("SELECT pg_notify(%s, '')", (WAKE_CHANNEL,))
    return cur.rowcount
