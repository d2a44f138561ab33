"""System statistics from counters kept as events happen: gateway rows carry sent/received
counts, `daily_counters` the failures and OTP figures, and the queue is counted through its
partial index. Nothing here scans the messages table."""

from __future__ import annotations

import psycopg

__all__ = ["system_stats"]

_TODAY = "(now() AT TIME ZONE current_setting('smsgw.day_zone'))::date"


def system_stats(conn: psycopg.Connection) -> dict:
    gw = conn.execute(
        "SELECT count(*) AS total, count(*) FILTER (WHERE active) AS active,"
        " count(*) FILTER (WHERE status = 'online') AS online,"
        " coalesce(sum(total_messages_sent), 0) AS total_sent,"
        " coalesce(sum(total_messages_received), 0) AS total_received,"
        " coalesce(sum(messages_sent_today), 0) AS sent_today,"
        " coalesce(sum(messages_received_today), 0) AS received_today FROM gateways"
    ).fetchone()
    pending = conn.execute(
        "SELECT (SELECT count(*) FROM messages WHERE status = 'queued')"
        " + (SELECT count(*) FROM messages WHERE status = 'dispatched') AS n"
    ).fetchone()["n"]
    counters = {row["name"]: row["value"] for row in conn.execute(
        f"SELECT name, value FROM daily_counters WHERE day = {_TODAY}").fetchall()}
    return {"gateways": gw, "pending": pending, "counters": counters}
