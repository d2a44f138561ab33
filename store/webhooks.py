"""Webhooks and their delivery outbox: the CRUD the API needs and the claims the actor makes.

Every function takes a connection inside one transaction (store.pool.Store.run). `owner` is
the calling key's id, or None for an admin key, which sees every webhook. A webhook that is
not the owner's is reported exactly like one that does not exist.

Delivery rows are claimed with `FOR UPDATE SKIP LOCKED` and leased by pushing
`next_attempt_at` forward, so nodes sharing the database never post one row at the same time;
a node that dies mid-attempt leaves a lease that simply runs out, and the row is tried again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from store.keys import new_public_id
from store.outbox import WAKE_CHANNEL, iso

__all__ = [
    "NotFound", "StillPending", "WebhookDisabled", "DISABLED_ERROR",
    "create", "get", "list_webhooks", "update", "delete",
    "list_deliveries", "redeliver", "queue_ping",
    "claim_due", "record_delivered", "record_failed", "prune_finished", "DELIVERY_RETENTION_DAYS",
]

WEBHOOK_FIELDS = "id, api_key_id, url, events, secret_key, active, description, created_at, updated_at"
DELIVERY_FIELDS = ("id, webhook_id, event_id, event, status, attempts, last_status_code, last_error,"
                   " next_attempt_at, created_at, delivered_at")
DISABLED_ERROR = "webhook disabled"
DELIVERY_RETENTION_DAYS = 7  # delivered and dead webhook deliveries are kept this long
_OWNED = "(%(owner)s::bigint IS NULL OR w.api_key_id = %(owner)s)"


class NotFound(Exception):
    """No such webhook or delivery, or it belongs to another key."""


class StillPending(Exception):
    """The delivery is still pending: it will be tried again without being asked."""


class WebhookDisabled(Exception):
    """The webhook is not active, so nothing can be queued for it."""


def create(conn: psycopg.Connection, api_key_id: int, fields: dict) -> dict:
    """Insert a webhook owned by `api_key_id`; `fields` holds url, events and the optional rest."""
    return conn.execute(
        "INSERT INTO webhooks (api_key_id, url, events, secret_key, active, description)"
        f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {WEBHOOK_FIELDS}",
        (api_key_id, fields["url"], list(fields["events"]), fields.get("secret_key"),
         fields.get("active", True), fields.get("description")),
    ).fetchone()


def get(conn: psycopg.Connection, webhook_id: int, owner: int | None) -> dict:
    """One webhook the caller may see; raise `NotFound` otherwise."""
    row = conn.execute(f"SELECT {WEBHOOK_FIELDS} FROM webhooks w WHERE w.id = %(id)s AND {_OWNED}",
                       {"id": webhook_id, "owner": owner}).fetchone()
    if row is None:
        raise NotFound(webhook_id)
    return row


def list_webhooks(conn: psycopg.Connection, owner: int | None) -> list[dict]:
    """The caller's webhooks (every one for an admin), oldest first."""
    return conn.execute(f"SELECT {WEBHOOK_FIELDS} FROM webhooks w WHERE {_OWNED} ORDER BY w.id",
                        {"owner": owner}).fetchall()


def update(conn: psycopg.Connection, webhook_id: int, owner: int | None, changes: dict) -> dict:
    """Apply `changes` (any of url, events, secret_key, active, description); raise `NotFound`.

    Rows already pending for a webhook that is switched off are marked dead by the actor when
    they come due (they are not deleted: their history stays readable)."""
    get(conn, webhook_id, owner)
    allowed = ("url", "events", "secret_key", "active", "description")
    sets = [f"{name} = %({name})s" for name in allowed if name in changes]
    params = {name: (list(value) if name == "events" else value) for name, value in changes.items()}
    return conn.execute(
        f"UPDATE webhooks SET {', '.join([*sets, 'updated_at = now()'])} WHERE id = %(id)s"
        f" RETURNING {WEBHOOK_FIELDS}",
        {**params, "id": webhook_id},
    ).fetchone()


def delete(conn: psycopg.Connection, webhook_id: int, owner: int | None) -> None:
    """Delete a webhook and its deliveries (pending ones are never sent); raise `NotFound`."""
    cur = conn.execute(f"DELETE FROM webhooks w WHERE w.id = %(id)s AND {_OWNED}",
                       {"id": webhook_id, "owner": owner})
    if cur.rowcount == 0:
        raise NotFound(webhook_id)


def list_deliveries(conn: psycopg.Connection, webhook_id: int, owner: int | None, *, limit: int,
                    page: int) -> tuple[list[dict], int]:
    """A webhook's deliveries, newest first: the page and the total; raise `NotFound`."""
    get(conn, webhook_id, owner)
    total = conn.execute("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = %s",
                         (webhook_id,)).fetchone()["n"]
    rows = conn.execute(
        f"SELECT {DELIVERY_FIELDS} FROM webhook_deliveries WHERE webhook_id = %s"
        " ORDER BY id DESC LIMIT %s OFFSET %s",
        (webhook_id, limit, (page - 1) * limit),
    ).fetchall()
    return rows, total


def redeliver(conn: psycopg.Connection, delivery_id: int, owner: int | None) -> dict:
    """Queue a new pending row with the payload and event_id of a delivered or dead one.

    The old row stays as it was (the history of what happened); receivers deduplicate on the
    event_id they see in X-Webhook-Id. Raises `NotFound`, `StillPending` or `WebhookDisabled`.
    """
    row = conn.execute(
        "SELECT d.id, d.status, d.webhook_id, w.active FROM webhook_deliveries d"
        f" JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = %(id)s AND {_OWNED}"
        " FOR UPDATE OF d",
        {"id": delivery_id, "owner": owner},
    ).fetchone()
    if row is None:
        raise NotFound(delivery_id)
    if row["status"] == "pending":
        raise StillPending(delivery_id)
    if not row["active"]:
        raise WebhookDisabled(row["webhook_id"])
    new = conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event, payload)"
        " SELECT webhook_id, event_id, event, payload FROM webhook_deliveries WHERE id = %s"
        f" RETURNING {DELIVERY_FIELDS}",
        (delivery_id,),
    ).fetchone()
    _notify(conn)
    return new


def queue_ping(conn: psycopg.Connection, webhook_id: int, owner: int | None, now: datetime) -> dict:
    """Queue a `ping` event to this webhook alone; raise `NotFound` or `WebhookDisabled`."""
    hook = get(conn, webhook_id, owner)
    if not hook["active"]:
        raise WebhookDisabled(webhook_id)
    event_id = new_public_id("evt_")
    payload = {"event": "ping", "event_id": event_id, "timestamp": iso(now), "webhook_id": webhook_id}
    row = conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event, payload)"
        f" VALUES (%s, %s, 'ping', %s) RETURNING {DELIVERY_FIELDS}",
        (webhook_id, event_id, Jsonb(payload)),
    ).fetchone()
    _notify(conn)
    return row


def claim_due(conn: psycopg.Connection, now: datetime, limit: int, lease_seconds: float) -> list[dict]:
    """Lease up to `limit` pending rows due at `now` and return them with their webhook's url
    and secret, oldest due first.

    Rows of a webhook switched off since they were written are marked dead here
    (last_error "webhook disabled") and not returned: a disabled webhook gets nothing, and an
    operator can still redeliver them after switching it back on.
    """
    rows = conn.execute(
        "WITH due AS (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= %s"
        "  ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE webhook_deliveries d SET next_attempt_at = %s FROM due, webhooks w"
        " WHERE d.id = due.id AND w.id = d.webhook_id"
        " RETURNING d.id, d.webhook_id, d.event_id, d.event, d.payload, d.attempts,"
        " w.url, w.secret_key, w.active",
        (now, limit, now + timedelta(seconds=lease_seconds)),
    ).fetchall()
    disabled = [r["id"] for r in rows if not r["active"]]
    if disabled:
        conn.execute("UPDATE webhook_deliveries SET status = 'dead', last_error = %s WHERE id = ANY(%s)",
                     (DISABLED_ERROR, disabled))
    return sorted((r for r in rows if r["active"]), key=lambda r: r["id"])


def record_delivered(conn: psycopg.Connection, delivery_id: int, status_code: int, now: datetime) -> None:
    """Mark a leased row delivered (a 2xx answer); a row no longer pending is left alone."""
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,"
        " last_status_code = %s, last_error = NULL, delivered_at = %s WHERE id = %s AND status = 'pending'",
        (status_code, now, delivery_id),
    )


def record_failed(conn: psycopg.Connection, delivery_id: int, status_code: int | None, error: str,
                  retry_at: datetime | None) -> None:
    """Count a failed attempt: pending again at `retry_at`, or dead when it is None."""
    conn.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status_code = %s, last_error = %s,"
        " status = CASE WHEN %s::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,"
        " next_attempt_at = COALESCE(%s::timestamptz, next_attempt_at)"
        " WHERE id = %s AND status = 'pending'",
        (status_code, error, retry_at, retry_at, delivery_id),
    )


def prune_finished(conn: psycopg.Connection, *, keep_days: int = DELIVERY_RETENTION_DAYS,
                   chunk: int = 5_000, max_chunks: int = 50) -> int:
    """Delete deliveries that ended (delivered or dead) more than `keep_days` ago; pending ones
    stay whatever their age. In chunks, each well within the statement timeout, and at most
    `max_chunks` of them a run (the job runs every 15 minutes); return how many went."""
    removed = 0
    for _ in range(max_chunks):
        n = conn.execute(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
            " WHERE status <> 'pending' AND created_at < now() - make_interval(days => %s) LIMIT %s)",
            (keep_days, chunk),
        ).rowcount
        removed += n
        if n < chunk:
            break
    return removed


def _notify(conn: psycopg.Connection) -> None:
    # Delivered at commit to every node's webhook actor (LISTEN on its own connection).
    conn.execute("SELECT pg_notify(%s, '')", (WAKE_CHANNEL,))
