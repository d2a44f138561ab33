"""Plain SQL migrations: `store/migrations/NNNN_name.sql`, applied in order, each in one
transaction, each recorded in `schema_migrations`. Applying twice changes nothing."""

from __future__ import annotations

import re
from importlib import resources

import psycopg

__all__ = ["pending_migrations", "apply_migrations"]

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("store") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if _NAME.match(p.name))
    return [(name, (folder / name).read_text()) for name in names]


def pending_migrations(conn: psycopg.Connection) -> list[str]:
    """Names of the migrations not yet applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {row["name"] if isinstance(row, dict) else row[0]
            for row in conn.execute("SELECT name FROM schema_migrations").fetchall()}
    return [name for name, _ in _migrations() if name not in done]


def apply_migrations(dsn: str) -> list[str]:
    """Apply the pending migrations, one transaction each; return the names applied.

    Concurrent starters (several nodes) serialise on an advisory lock, so each migration runs
    once.
    """
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(7263001)")
        try:
            pending = set(pending_migrations(conn))
            for name, sql in _migrations():
                if name not in pending:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(7263001)")
    return applied
