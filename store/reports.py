"""Phones' delivery reports, applied a batch at a time.

A batch of reports is a handful of statements, whatever its size: one SELECT locks the rows
(in message_id order, so two batches in flight cannot deadlock), the pure `decide` works out
each transition in Python, one UPDATE writes them all, one INSERT queues the webhook events,
and the counters are written last. Reports are idempotent: a repeat, or a late `sent` after
`delivered`, changes nothing.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Callable, Sequence

import attrs
import psycopg

from store import outbox
from store.messages import UnknownMessage, bump_counter

__all__ = ["Report", "ReportOutcome", "Transition", "apply_reports", "decide"]

FINAL = frozenset({"delivered", "failed", "cancelled"})


@attrs.frozen
class Report:
    gateway: dict
    message_id: str
    status: str  # sent, delivered, failed
    error_message: str | None = None


@attrs.frozen
class ReportOutcome:
    message_id: str
    status: str  # the message's status after the report
    changed: bool
    requeued: bool = False  # a failure that will be retried on another gateway


@attrs.frozen
class Transition:
    """What one report does to its message (pure data, no I/O)."""

    outcome: ReportOutcome
    row: dict                      # the row as it is after the report
    events: tuple[str, ...] = ()   # webhook events to emit, in order
    sent: bool = False             # the gateway's sent counters grow by one
    failed: bool = False           # today's failure counter grows by one


def decide(row: dict, report: Report, now: datetime, *, max_attempts: int,
           retry_delay: Callable[[int], float | None]) -> Transition:
    """The effect of `report` on the message `row` at `now`; raises `UnknownMessage` when the
    message was never this gateway's. Pure: `row` is not modified."""
    gateway_id = report.gateway["id"]
    if gateway_id not in (row["gateway_id"], row["avoid_gateway_id"]):
        raise UnknownMessage(report.message_id)
    current = row["status"]
    unchanged = Transition(ReportOutcome(row["message_id"], current, changed=False), row)
    if row["gateway_id"] != gateway_id or current in FINAL:
        return unchanged
    if report.status == "sent":
        if current != "dispatched":
            return unchanged
        after = {**row, "status": "sent", "sent_at": now}
        return Transition(ReportOutcome(row["message_id"], "sent", True), after, ("sms_sent",), sent=True)
    if report.status == "delivered":
        first_sent = row["sent_at"] is None
        after = {**row, "status": "delivered", "delivered_at": now, "sent_at": row["sent_at"] or now}
        events = ("sms_sent", "sms_delivered") if first_sent else ("sms_delivered",)
        return Transition(ReportOutcome(row["message_id"], "delivered", True), after, events, sent=first_sent)
    delay = retry_delay(row["attempts"]) if row["attempts"] < max_attempts else None
    if delay is not None:
        after = {**row, "status": "queued", "gateway_id": None, "avoid_gateway_id": gateway_id,
                 "lease": None, "error_message": report.error_message,
                 "not_before": now + timedelta(seconds=delay)}
        return Transition(ReportOutcome(row["message_id"], "queued", True, requeued=True), after)
    after = {**row, "status": "failed", "failed_at": now,
             "error_message": report.error_message or row["error_message"] or "failed"}
    return Transition(ReportOutcome(row["message_id"], "failed", True), after, ("sms_failed",), failed=True)


_COLUMNS = ("id, message_id, status, gateway_id, avoid_gateway_id, lease, attempts, api_key_id,"
            " phone_number, reference, sent_at, delivered_at, failed_at, error_message, not_before")


def apply_reports(conn: psycopg.Connection, reports: Sequence[Report], *, max_attempts: int,
                  retry_delay: Callable[[int], float | None]) -> list[ReportOutcome | UnknownMessage]:
    """Apply a batch of phone reports in one transaction; one outcome (or UnknownMessage) each,
    in order. Reports on one message apply in the order given."""
    rows = conn.execute(
        # By the unique index on message_id alone: with `direction = 'outbound'` in the WHERE the
        # planner also walked the outbound index, every entry of it, on every batch.
        f"SELECT {_COLUMNS}, direction, now() AS now FROM messages WHERE message_id = ANY(%b::text[])"
        " ORDER BY message_id FOR UPDATE",
        (sorted({r.message_id for r in reports}),),
    ).fetchall()
    rows = [row for row in rows if row["direction"] == "outbound"]  # an inbound id is unknown here
    now = rows[0]["now"] if rows else None
    state = {row["message_id"]: row for row in rows}
    changed: dict[str, dict] = {}
    events: list[tuple[str, dict, int | None]] = []
    sent: dict[int, int] = {}
    failed = 0
    outcomes: list[ReportOutcome | UnknownMessage] = []
    for report in reports:
        row = state.get(report.message_id)
        try:
            if row is None:
                raise UnknownMessage(report.message_id)
            step = decide(row, report, now, max_attempts=max_attempts, retry_delay=retry_delay)
        except UnknownMessage as exc:
            outcomes.append(exc)
            continue
        outcomes.append(step.outcome)
        if not step.outcome.changed:
            continue
        state[report.message_id] = changed[report.message_id] = step.row
        payload = functools.partial(_payload, step.row, report.gateway)  # built only if subscribed
        events += [(event, payload, step.row["api_key_id"]) for event in step.events]
        if step.sent:
            sent[report.gateway["id"]] = sent.get(report.gateway["id"], 0) + 1
        failed += step.failed
    _write_rows(conn, list(changed.values()), now)
    outbox.emit_many(conn, events)
    _count(conn, sent, failed)
    return outcomes


def _write_rows(conn: psycopg.Connection, rows: list[dict], now: datetime) -> None:
    # Most changes are `sent` or `delivered` stamped with the transaction's now(): those need
    # only the id and the status (half the work of dumping ten columns), the rest go whole.
    simple, rest = [], []
    for row in rows:
        (simple if _stamped_now(row, now) else rest).append(row)
    if simple:
        conn.execute(
            "UPDATE messages m SET status = u.status,"
            " sent_at = CASE WHEN u.sent_now THEN now() ELSE m.sent_at END,"
            " delivered_at = CASE WHEN u.status = 'delivered' THEN now() ELSE m.delivered_at END,"
            " updated_at = now()"
            " FROM unnest(%b::bigint[], %b::text[], %b::bool[]) AS u(id, status, sent_now) WHERE m.id = u.id",
            ([row["id"] for row in simple], [row["status"] for row in simple],
             [row["sent_at"] == now for row in simple]),
        )
    if not rest:
        return
    rows = rest
    columns = ("id", "status", "gateway_id", "avoid_gateway_id", "lease", "sent_at", "delivered_at",
               "failed_at", "error_message", "not_before")
    types = ("bigint", "text", "bigint", "bigint", "text", "timestamptz", "timestamptz", "timestamptz",
             "text", "timestamptz")
    arrays = tuple([row[c] for row in rows] for c in columns)
    unnest = ", ".join(f"%b::{t}[]" for t in types)
    sets = ", ".join(f"{c} = u.{c}" for c in columns[1:])
    conn.execute(
        f"UPDATE messages m SET {sets}, updated_at = now()"
        f" FROM unnest({unnest}) AS u({', '.join(columns)}) WHERE m.id = u.id",
        arrays,
    )


def _stamped_now(row: dict, now: datetime) -> bool:
    """A row `decide` moved to `sent` (sent now) or `delivered` (delivered now). Such a row
    went only through those steps from `dispatched`, so only its status and stamps changed
    (`sent_at` is now or as stored): the short UPDATE in `_write_rows` writes exactly that."""
    if row["status"] == "sent":
        return row["sent_at"] == now
    return row["status"] == "delivered" and row["delivered_at"] == now


def _count(conn: psycopg.Connection, sent: dict[int, int], failed: int) -> None:
    """Counters last, gateways in id order: no lock cycles between batches."""
    if sent:
        ids = sorted(sent)
        conn.execute(
            "UPDATE gateways g SET messages_sent_today = messages_sent_today + t.n,"
            " total_messages_sent = total_messages_sent + t.n"
            " FROM unnest(%b::bigint[], %b::int[]) AS t(id, n) WHERE g.id = t.id",
            (ids, [sent[i] for i in ids]),
        )
    if failed:
        bump_counter(conn, "sms_failed", failed)


def _payload(row: dict, gateway: dict) -> dict:
    return {
        "message_id": row["message_id"], "to": row["phone_number"], "status": row["status"],
        "reference": row["reference"], "sent_at": outbox.iso(row["sent_at"]),
        "delivered_at": outbox.iso(row["delivered_at"]), "failed_at": outbox.iso(row["failed_at"]),
        "error_message": row["error_message"], "gateway_id": gateway["device_id"],
    }
