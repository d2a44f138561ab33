"""Messages in both directions, and every transition of an outbound message.

`queued → dispatched → sent → delivered`, or `→ failed`; each transition is one function and
one transaction that sets its timestamp, the gateway's counters and the webhook outbox row.
Reports are idempotent: a repeat, or a late `sent` after `delivered`, changes nothing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Callable, Sequence

import attrs
import psycopg

from store import outbox
from store.keys import new_public_id

__all__ = [
    "NewMessage", "UnknownMessage", "insert_outbound", "get_outbound", "store_inbound",
    "list_inbound", "any_due", "claim_for_dispatch", "requeue_dispatched",
    "requeue", "requeue_lease", "take_back_stale", "release_scheduled", "expire_queued", "bump_counter", "STATUS_FIELDS",
]

_TODAY = "(now() AT TIME ZONE current_setting('smsgw.day_zone'))::date"
STATUS_FIELDS = ("message_id, status, phone_number, body, segments, encoding, priority, reference,"
                 " api_key_id, gateway_id, attempts, error_message, send_at, sent_at, delivered_at,"
                 " failed_at, created_at, expires_at")


class UnknownMessage(Exception):
    """No such message, or not one this gateway was given."""


@attrs.frozen
class NewMessage:
    phone_number: str
    body: str
    segments: int
    encoding: str
    api_key_id: int | None
    ttl_seconds: int
    priority: int = 1
    reference: str | None = None
    send_at: datetime | None = None


def insert_outbound(conn: psycopg.Connection, batch: Sequence[NewMessage],
                    dispatch: Sequence[tuple[int, str] | None] = ()) -> list[dict]:
    """Insert a batch of outbound messages in one statement; return their rows in order.

    `dispatch` gives, by position, the (gateway_id, lease) a message is handed to at once: it
    is written dispatched to that connection (as a claim would) instead of queued."""
    columns: tuple[list, ...] = ([], [], [], [], [], [], [], [], [], [], [], [], [])
    for m, to in zip(batch, dispatch or [None] * len(batch), strict=True):
        to = None if m.send_at else to  # a scheduled message waits for its time
        status = "scheduled" if m.send_at else "queued" if to is None else "dispatched"
        gateway_id, lease = to or (None, None)
        values = (new_public_id("msg_"), status, m.phone_number, m.body, m.segments, m.encoding,
                  m.priority, m.reference, m.api_key_id, m.send_at, m.ttl_seconds, gateway_id, lease)
        for column, value in zip(columns, values):
            column.append(value)
    rows = conn.execute(
        "INSERT INTO messages (message_id, direction, status, phone_number, body, segments, encoding,"
        " priority, reference, api_key_id, send_at, expires_at, gateway_id, lease, attempts, dispatched_at)"
        " SELECT message_id, 'outbound', status, phone_number, body, segments, encoding, priority,"
        " reference, api_key_id, send_at, COALESCE(send_at, now()) + make_interval(secs => ttl),"
        " gateway_id, lease, CASE WHEN lease IS NULL THEN 0 ELSE 1 END,"
        " CASE WHEN lease IS NULL THEN NULL ELSE now() END"
        " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::smallint[], %b::text[],"
        " %b::smallint[], %b::text[], %b::bigint[], %b::timestamptz[], %b::int[], %b::bigint[], %b::text[])"
        " WITH ORDINALITY AS t(message_id, status, phone_number, body, segments, encoding, priority,"
        " reference, api_key_id, send_at, ttl, gateway_id, lease, n) ORDER BY n"
        f" RETURNING {STATUS_FIELDS}, lease",
        columns,
    ).fetchall()
    order = {m: i for i, m in enumerate(columns[0])}
    return sorted(rows, key=lambda r: order[r["message_id"]])


def get_outbound(conn: psycopg.Connection, message_id: str) -> dict | None:
    return conn.execute(
        f"SELECT {STATUS_FIELDS} FROM messages WHERE message_id = %s AND direction = 'outbound'",
        (message_id,),
    ).fetchone()


def bump_counter(conn: psycopg.Connection, name: str, by: int = 1) -> None:
    """Add to today's counter `name` (the day follows TZ_DAILY_RESET)."""
    conn.execute(
        f"INSERT INTO daily_counters (day, name, value) VALUES ({_TODAY}, %s, %s)"
        " ON CONFLICT (day, name) DO UPDATE SET value = daily_counters.value + EXCLUDED.value",
        (name, by),
    )


def store_inbound(conn: psycopg.Connection, gateway: dict, sender: str, body: str,
                  received_at: datetime) -> tuple[str, bool]:
    """Store an inbound SMS once; return its message_id and whether it was new.

    A phone that resends after a reconnect gets the first row's id back (deduplicated on
    gateway, sender, timestamp and text).
    """
    dedup = hashlib.sha256(f"{sender}\x00{received_at.isoformat()}\x00{body}".encode()).hexdigest()
    row = conn.execute(
        "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id,"
        " dedup_key, received_at) VALUES (%s, 'inbound', 'received', %s, %s, %s, %s, %s)"
        " ON CONFLICT (gateway_id, dedup_key) WHERE direction = 'inbound' DO NOTHING"
        " RETURNING message_id",
        (new_public_id("msg_"), sender, body, gateway["id"], dedup, received_at),
    ).fetchone()
    if row is None:
        existing = conn.execute(
            "SELECT message_id FROM messages WHERE gateway_id = %s AND dedup_key = %s AND direction = 'inbound'",
            (gateway["id"], dedup),
        ).fetchone()
        return existing["message_id"], False
    conn.execute(
        "UPDATE gateways SET messages_received_today = messages_received_today + 1,"
        " total_messages_received = total_messages_received + 1 WHERE id = %s",
        (gateway["id"],),
    )
    outbox.emit(conn, "sms_received", {
        "message_id": row["message_id"], "from": sender, "message": body,
        "received_at": outbox.iso(received_at), "gateway_id": gateway["device_id"],
    })
    return row["message_id"], True


def list_inbound(conn: psycopg.Connection, *, phone_number: str | None, since: datetime | None,
                 limit: int, page: int) -> tuple[list[dict], int]:
    """Inbound messages, newest first, filtered; return the page and the total count."""
    where, params = ["direction = 'inbound'"], []
    if phone_number is not None:
        where.append("phone_number = %s")
        params.append(phone_number)
    if since is not None:
        where.append("received_at > %s")
        params.append(since)
    clause = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM messages WHERE {clause}", params).fetchone()["n"]
    rows = conn.execute(
        f"SELECT message_id, phone_number, body, received_at FROM messages WHERE {clause}"
        " ORDER BY received_at DESC, id DESC LIMIT %s OFFSET %s",
        [*params, limit, (page - 1) * limit],
    ).fetchall()
    return rows, total


def any_due(conn: psycopg.Connection) -> bool:
    """Whether a queued message is due (what `claim_for_dispatch` would find)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE status = 'queued'"
        " AND (not_before IS NULL OR not_before <= now())) AS due"
    ).fetchone()["due"]


def claim_for_dispatch(conn: psycopg.Connection, limit: int,
                       plan: Callable[[list[dict]], list[tuple[str, int]]],
                       leases: dict[int, str]) -> tuple[list[dict], int]:
    """Claim up to `limit` due queued messages (SKIP LOCKED), let `plan` pick a gateway for
    each, and mark the planned ones dispatched; return the dispatched rows and how many due
    rows were left queued for want of a gateway.

    Several nodes may claim at once: a row locked by one is skipped by the others, so no
    message goes to two gateways. Rows that `plan` leaves out stay queued.
    """
    due = conn.execute(
        "SELECT id, message_id, phone_number, body, segments, avoid_gateway_id, priority"
        " FROM messages WHERE status = 'queued' AND (not_before IS NULL OR not_before <= now())"
        " ORDER BY priority, id LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    ).fetchall()
    if not due:
        return [], 0
    chosen = dict(plan(due))
    if not chosen:
        return [], len(due)
    planned = [row for row in due if row["message_id"] in chosen]
    gateway_ids = [chosen[row["message_id"]] for row in planned]
    # The rows are locked: the UPDATE changes each of them. What the caller needs is already in
    # `due`, so nothing comes back but the count (no second row per message to build).
    updated = conn.execute(
        "UPDATE messages m SET status = 'dispatched', gateway_id = a.gateway_id, lease = a.lease,"
        " dispatched_at = now(), attempts = m.attempts + 1, updated_at = now()"
        " FROM unnest(%b::bigint[], %b::bigint[], %b::text[]) AS a(id, gateway_id, lease)"
        " WHERE m.id = a.id",
        ([row["id"] for row in planned], gateway_ids, [leases[g] for g in gateway_ids]),
    ).rowcount
    if updated != len(planned):  # cannot happen to locked rows; never hand out what was not written
        raise RuntimeError(f"claim: {updated} rows dispatched of {len(planned)} planned")
    rows = [{**row, "gateway_id": gateway_id, "lease": leases[gateway_id]}
            for row, gateway_id in zip(planned, gateway_ids)]
    return rows, len(due) - len(rows)


def requeue(conn: psycopg.Connection, where: str, params: Sequence[object], *, avoid_gateway_id: int | None) -> int:
    """Return the dispatched messages matching `where` to the queue; return how many.

    Rows are locked in message_id order first, the order the report path uses, so a requeue
    and a batch of reports never wait on each other in a cycle. `status = 'dispatched'` is
    written out, not a parameter, so the partial indexes on dispatched rows (by gateway, by
    lease) serve it: a prepared statement with the status as a parameter scanned the table.
    """
    return conn.execute(
        "WITH target AS (SELECT id FROM messages WHERE status = 'dispatched' AND " + where +
        " ORDER BY message_id FOR UPDATE)"
        " UPDATE messages m SET status = 'queued', gateway_id = NULL, lease = NULL,"
        " avoid_gateway_id = COALESCE(%s, m.avoid_gateway_id), updated_at = now()"
        " FROM target WHERE m.id = target.id",
        [*params, avoid_gateway_id],
    ).rowcount


def requeue_lease(conn: psycopg.Connection, gateway_id: int, lease: str) -> int:
    """Return what one connection still held (dispatched, not yet sent) to the queue."""
    return requeue(conn, "lease = %s", [lease], avoid_gateway_id=gateway_id)


def take_back_stale(conn: psycopg.Connection, gateway_id: int, lease: str) -> int:
    """A phone's new connection takes back what its older connections held: requeue them.

    Covers a socket replaced on another node and a node that was killed; the phone
    deduplicates by message_id if it did get them.
    """
    return requeue(conn, "gateway_id = %s AND lease IS DISTINCT FROM %s", [gateway_id, lease],
                   avoid_gateway_id=None)


def requeue_dispatched(conn: psycopg.Connection, gateway_id: int, message_ids: Sequence[str] | None = None) -> int:
    """Return dispatched-but-unsent messages of a gateway (or just `message_ids`) to the queue."""
    if message_ids is None:
        return requeue(conn, "gateway_id = %s", [gateway_id], avoid_gateway_id=gateway_id)
    return requeue(conn, "gateway_id = %s AND message_id = ANY(%b::text[])", [gateway_id, list(message_ids)],
                   avoid_gateway_id=gateway_id)


def release_scheduled(conn: psycopg.Connection) -> int:
    """Move scheduled messages whose `send_at` has come into the queue."""
    return conn.execute(
        "UPDATE messages SET status = 'queued', updated_at = now()"
        " WHERE status = 'scheduled' AND send_at <= now()"
    ).rowcount


def expire_queued(conn: psycopg.Connection) -> int:
    """Fail queued messages past their TTL with `error_message: "expired"`."""
    rows = conn.execute(
        "WITH target AS (SELECT id FROM messages WHERE status = 'queued' AND expires_at <= now()"
        " ORDER BY message_id FOR UPDATE)"
        " UPDATE messages m SET status = 'failed', failed_at = now(), error_message = 'expired',"
        f" updated_at = now() FROM target WHERE m.id = target.id RETURNING {', '.join('m.' + f.strip() for f in STATUS_FIELDS.split(','))}"
    ).fetchall()
    if rows:
        bump_counter(conn, "sms_failed", len(rows))
    for row in rows:
        outbox.emit(conn, "sms_failed", {
            "message_id": row["message_id"], "to": row["phone_number"], "status": "failed",
            "reference": row["reference"], "sent_at": None, "delivered_at": None,
            "failed_at": outbox.iso(row["failed_at"]), "error_message": "expired", "gateway_id": None,
        }, owner_key_id=row["api_key_id"])
    return len(rows)
