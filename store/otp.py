"""One-time passwords: issuing (with its SMS and the rolling-hour limits) and checking.

Only an HMAC of (phone, purpose, code) is stored, never the code. Every timestamp these rules
compare is the caller's `now` (the node's wall clock), not the database's `now()`, so the
rules follow the same clock as the rest of the node and tests can move it.

Each function is one transaction (run through `Store.run`). Concurrency rests on PostgreSQL:
sends for one phone are serialised by an advisory transaction lock (and, when a per-key limit
is set, sends of one key too), and a check is one row update, so any number of parallel
checks of one code, on any number of nodes, spend each attempt once and verify at most once.
"""

from __future__ import annotations

import hmac
import math
from datetime import datetime, timedelta

import attrs
import psycopg

from store.messages import NewMessage, bump_counter, insert_outbound

__all__ = ["Issued", "Limited", "Checked", "WINDOW", "issue", "check", "cleanup", "retry_after"]

WINDOW = timedelta(hours=1)  # the rolling window of the send limits
KEEP_AFTER = timedelta(hours=1)  # how long an expired, spent or replaced code stays for audit
# Advisory-lock namespaces (the two-int form, so they never meet single-bigint locks).
_PHONE_LOCK = 0x0710
_KEY_LOCK = 0x0711


@attrs.frozen
class Issued:
    message_id: str
    expires_at: datetime


@attrs.frozen
class Limited:
    """A send refused by a rolling-hour limit; `retry_after` seconds until one frees up."""
    reason: str  # "phone" or "key"
    retry_after: int


@attrs.frozen
class Checked:
    verified: bool
    attempts_remaining: int


def issue(conn: psycopg.Connection, *, code_hash: str, purpose: str, message: NewMessage, now: datetime,
          expires_at: datetime, per_phone: int, per_key: int, handoff=None) -> Issued | Limited:
    """Record a new code and queue its SMS, unless a rolling-hour limit refuses it.

    With a `handoff` (actors.dispatcher.Handoff, key 0) that chose a phone, the SMS is written
    dispatched to it instead, and its row goes to `handoff.rows` (as `store.sends.write_sends`).

    In one transaction: wait for this phone's lock (and the key's, when `per_key` > 0), count
    the sends of the last hour, mark the phone's open code for `purpose` superseded, insert
    the message, the code and the send, and bump `otp_sent`. A limit of 0 means none.
    """
    phone, key_id = message.phone_number, message.api_key_id
    if handoff is not None:  # (a try rolled back and run again starts afresh)
        handoff.rows, handoff.queued = [], False
    conn.execute("SELECT pg_advisory_xact_lock(%s::int, hashtext(%s))", (_PHONE_LOCK, phone))
    wait = _limit_wait(conn, "phone_number", phone, per_phone, now)
    if wait is not None:
        return Limited("phone", wait)
    if per_key > 0 and key_id is not None:
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, %s::int)", (_KEY_LOCK, key_id % 2**31))
        wait = _limit_wait(conn, "api_key_id", key_id, per_key, now)
        if wait is not None:
            return Limited("key", wait)
    conn.execute(
        "UPDATE otp_codes SET superseded_at = %s WHERE phone_number = %s AND purpose = %s"
        " AND api_key_id IS NOT DISTINCT FROM %s AND verified_at IS NULL AND superseded_at IS NULL",
        (now, phone, purpose, key_id),
    )
    to = handoff.chosen.get(0) if handoff is not None else None
    row = insert_outbound(conn, [message], [to] if to is not None else ())[0]
    if handoff is not None:
        handoff.rows = [row] if row["status"] == "dispatched" else []
        handoff.queued = row["status"] == "queued"
    conn.execute(
        "INSERT INTO otp_codes (phone_number, purpose, code_hash, api_key_id, message_id, expires_at, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (phone, purpose, code_hash, key_id, row["message_id"], expires_at, now),
    )
    conn.execute("INSERT INTO otp_sends (phone_number, api_key_id, sent_at) VALUES (%s, %s, %s)",
                 (phone, key_id, now))
    bump_counter(conn, "otp_sent")
    return Issued(message_id=row["message_id"], expires_at=expires_at)


def check(conn: psycopg.Connection, *, phone: str, purpose: str, code_hash: str, now: datetime,
          key_id: int | None = None) -> Checked:
    """Spend one attempt of the phone's open code for `purpose` that the client key `key_id`
    sent, and compare it to `code_hash`. Codes belong to the key that sent them: another
    application can neither verify them nor spend their attempts.

    The attempt is one `UPDATE … RETURNING` on a row that is open, unexpired and has attempts
    left; concurrent checks queue on that row's lock and see each other's result, so at most
    one verifies and attempts never go below 0. A match sets `verified_at` (single use) and
    bumps `otp_verified`. No open code, an expired, spent or replaced one, or one out of
    attempts answers not verified with 0 attempts remaining.
    """
    row = conn.execute(
        "UPDATE otp_codes SET attempts_remaining = attempts_remaining - 1"
        " WHERE id = (SELECT id FROM otp_codes WHERE phone_number = %(phone)s AND purpose = %(purpose)s"
        "             AND api_key_id IS NOT DISTINCT FROM %(key)s"
        "             AND verified_at IS NULL AND superseded_at IS NULL ORDER BY id DESC LIMIT 1)"
        " AND verified_at IS NULL AND superseded_at IS NULL"
        " AND attempts_remaining > 0 AND expires_at > %(now)s"
        " RETURNING id, code_hash, attempts_remaining",
        {"phone": phone, "purpose": purpose, "now": now, "key": key_id},
    ).fetchone()
    if row is None:
        return Checked(verified=False, attempts_remaining=0)
    if not hmac.compare_digest(row["code_hash"], code_hash):
        return Checked(verified=False, attempts_remaining=row["attempts_remaining"])
    conn.execute("UPDATE otp_codes SET verified_at = %s WHERE id = %s", (now, row["id"]))
    bump_counter(conn, "otp_verified")
    return Checked(verified=True, attempts_remaining=row["attempts_remaining"])


def cleanup(conn: psycopg.Connection, now: datetime) -> int:
    """Delete codes expired, spent or replaced more than an hour before `now`, and sends older
    than the window; return how many codes went. Idempotent."""
    cutoff = now - KEEP_AFTER
    deleted = conn.execute(
        "DELETE FROM otp_codes WHERE expires_at <= %(cutoff)s OR verified_at <= %(cutoff)s"
        " OR superseded_at <= %(cutoff)s",
        {"cutoff": cutoff},
    ).rowcount
    conn.execute("DELETE FROM otp_sends WHERE sent_at <= %s", (now - WINDOW,))
    return deleted


def retry_after(recent: list[datetime], limit: int, now: datetime, window: timedelta = WINDOW) -> int | None:
    """Whole seconds until a send is allowed again, or None if it is allowed now.

    `recent` holds the send times inside the window, newest first (at least the newest
    `limit`). A send is allowed while fewer than `limit` fall in the window; otherwise when
    the `limit`-th newest leaves it. At least 1 second.
    """
    if limit <= 0 or len(recent) < limit:
        return None
    leaves_at = recent[limit - 1] + window
    seconds = (leaves_at - now).total_seconds()
    return max(1, math.ceil(seconds))


def _limit_wait(conn: psycopg.Connection, column: str, value: object, limit: int, now: datetime) -> int | None:
    if limit <= 0:
        return None
    rows = conn.execute(
        f"SELECT sent_at FROM otp_sends WHERE {column} = %s AND sent_at > %s ORDER BY sent_at DESC LIMIT %s",
        (value, now - WINDOW, limit),
    ).fetchall()
    return retry_after([r["sent_at"] for r in rows], limit, now)
