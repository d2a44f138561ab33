"""`Idempotency-Key`: the first answer to a request is kept 24 h and returned for repeats."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["IdempotencyConflict", "lock", "recall", "remember", "purge_expired"]


class IdempotencyConflict(Exception):
    """The key was used before with a different request body."""


def lock(conn: psycopg.Connection, key_id: int, idem: str) -> None:
    """Hold this key until the transaction ends, so two concurrent repeats wait for each other
    and the second gets the first's answer instead of a second message."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (idem, key_id))


def recall(conn: psycopg.Connection, key_id: int, idem: str, request_hash: str) -> tuple[dict, int] | None:
    """The stored answer for this key, or None; `IdempotencyConflict` for another body.
    Call `lock` first."""
    row = conn.execute(
        "SELECT request_hash, status_code, response FROM idempotency_keys"
        " WHERE api_key_id = %s AND key = %s AND created_at > now() - interval '24 hours'",
        (key_id, idem),
    ).fetchone()
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise IdempotencyConflict(idem)
    return row["response"], row["status_code"]


def remember(conn: psycopg.Connection, key_id: int, idem: str, request_hash: str, status: int, answer: dict) -> None:
    conn.execute(
        "INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (api_key_id, key) DO UPDATE SET"
        " request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,"
        " response = EXCLUDED.response, created_at = now()",
        (key_id, idem, request_hash, status, Jsonb(answer)),
    )


def purge_expired(conn: psycopg.Connection) -> int:
    return conn.execute("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'").rowcount
