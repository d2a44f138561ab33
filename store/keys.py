"""API keys: `gw_live_…` for phones, `api_live_…` for applications.

A key is its prefix and 43 base62 characters from `secrets` (256 bits). Only the SHA-256
digest is stored, with a short display prefix; the key itself is shown once.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from typing import Iterable

import attrs
import psycopg

__all__ = [
    "GATEWAY_PREFIX", "CLIENT_PREFIX", "SCOPES", "ApiKey", "new_key", "digest_of",
    "new_public_id", "create_client_key", "find_key", "find_key_by_digest", "list_keys", "revoke_by_prefix",
    "issue_gateway_key",
]

GATEWAY_PREFIX = "gw_live_"
CLIENT_PREFIX = "api_live_"
SCOPES = ("sms", "otp", "admin")
_ALPHABET = string.digits + string.ascii_letters
_SECRET_LENGTH = 43  # 62**43 > 2**256
_DISPLAY_LENGTH = 8


@attrs.frozen
class ApiKey:
    id: int
    kind: str  # "gateway" or "client"
    name: str
    prefix: str
    scopes: tuple[str, ...]
    gateway_id: int | None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def new_public_id(prefix: str, length: int = 22) -> str:
    """A random, non-sequential public id such as `msg_…` (base62, ~131 bits at 22 chars)."""
    # One call to the OS for the randomness, then base62 digits of it (uniform enough: the
    # number has 64 more bits than the digits need, so the bias is below 2**-64).
    number = int.from_bytes(secrets.token_bytes((length * 6 + 64) // 8 + 1), "big")
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return prefix + "".join(digits)


def new_key(prefix: str) -> str:
    return new_public_id(prefix, _SECRET_LENGTH)


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    kind_prefix = GATEWAY_PREFIX if key.startswith(GATEWAY_PREFIX) else CLIENT_PREFIX
    return key[: len(kind_prefix) + _DISPLAY_LENGTH]


def _row_to_key(row: dict) -> ApiKey:
    return ApiKey(id=row["id"], kind=row["kind"], name=row["name"], prefix=row["prefix"],
                  scopes=tuple(row["scopes"]), gateway_id=row["gateway_id"])


def create_client_key(conn: psycopg.Connection, name: str, scopes: Iterable[str]) -> tuple[str, ApiKey]:
    """Create a client key; return the key (to show once) and its record."""
    scopes = tuple(dict.fromkeys(scopes))
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
    key = new_key(CLIENT_PREFIX)
    row = conn.execute(
        "INSERT INTO api_keys (kind, digest, prefix, name, scopes) VALUES ('client', %s, %s, %s, %s)"
        " RETURNING *",
        (digest_of(key), display_prefix(key), name, list(scopes)),
    ).fetchone()
    return key, _row_to_key(row)


def issue_gateway_key(conn: psycopg.Connection, gateway_id: int, name: str) -> str:
    """Give a gateway a new key, revoking its previous one (rotation)."""
    conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE gateway_id = %s AND revoked_at IS NULL",
        (gateway_id,),
    )
    key = new_key(GATEWAY_PREFIX)
    conn.execute(
        "INSERT INTO api_keys (kind, digest, prefix, name, gateway_id) VALUES ('gateway', %s, %s, %s, %s)",
        (digest_of(key), display_prefix(key), name, gateway_id),
    )
    return key


def find_key(conn: psycopg.Connection, key: str) -> ApiKey | None:
    """The live (not revoked) key with this value, or None."""
    return find_key_by_digest(conn, digest_of(key))


def find_key_by_digest(conn: psycopg.Connection, digest: str) -> ApiKey | None:
    row = conn.execute(
        "SELECT * FROM api_keys WHERE digest = %s AND revoked_at IS NULL", (digest,)
    ).fetchone()
    return _row_to_key(row) if row else None


def list_keys(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(
        "SELECT id, kind, prefix, name, scopes, gateway_id, created_at, revoked_at"
        " FROM api_keys ORDER BY id"
    ).fetchall()


def revoke_by_prefix(conn: psycopg.Connection, prefix: str) -> int:
    """Revoke the live keys whose display prefix starts with `prefix`; return how many."""
    if len(prefix) < len(GATEWAY_PREFIX) + 4:
        raise ValueError("give at least the kind prefix and 4 more characters")
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix LIKE %s AND revoked_at IS NULL",
        (prefix.replace("%", r"\%").replace("_", r"\_") + "%",),
    )
    return cur.rowcount
