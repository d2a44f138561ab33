"""Gateways (the phones): registration, heartbeats, admin changes, counters."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from store import keys
from store.messages import requeue, requeue_lease, take_back_stale
from store.outbox import emit

__all__ = [
    "DeviceTaken", "register", "heartbeat", "record_heartbeats", "get", "get_by_device", "list_gateways",
    "toggle", "update", "mark_online", "mark_offline", "pending_count", "reset_daily_counters",
    "orphan_candidates", "reclaim_orphans",
]

PUBLIC_COLUMNS = (
    "id, device_id, name, status, last_heartbeat_at, messages_sent_today, messages_received_today,"
    " total_messages_sent, total_messages_received, active, priority, metadata, created_at,"
    " battery_level, signal_strength, messages_in_queue, send_rate_per_minute"
)


class DeviceTaken(Exception):
    """The device_id belongs to a gateway and the request did not prove it owns it."""


def register(conn: psycopg.Connection, device_id: str, name: str, presented_key: str | None) -> tuple[dict, str]:
    """Create a gateway and its key, or rotate the key of an existing one.

    An existing device_id is taken only with that gateway's own live key (rotation);
    anyone else gets `DeviceTaken`, so knowing a device_id is not enough to take a phone over.
    """
    row = conn.execute(
        "INSERT INTO gateways (device_id, name) VALUES (%s, %s)"
        " ON CONFLICT (device_id) DO NOTHING RETURNING id",
        (device_id, name),
    ).fetchone()
    if row is None:
        existing = conn.execute(
            "SELECT id FROM gateways WHERE device_id = %s FOR UPDATE", (device_id,)
        ).fetchone()
        owner = keys.find_key(conn, presented_key) if presented_key else None
        if owner is None or owner.gateway_id != existing["id"]:
            raise DeviceTaken(device_id)
        conn.execute("UPDATE gateways SET name = %s, updated_at = now() WHERE id = %s",
                     (name, existing["id"]))
        gateway_id = existing["id"]
    else:
        gateway_id = row["id"]
    key = keys.issue_gateway_key(conn, gateway_id, name)
    return get(conn, gateway_id), key


def heartbeat(conn: psycopg.Connection, gateway_id: int, *, battery_level: int | None,
              signal_strength: int | None, messages_in_queue: int | None) -> int:
    """Record a heartbeat (REST), mark the gateway online; return its pending message count."""
    record_heartbeats(conn, {gateway_id: (battery_level, signal_strength, messages_in_queue)})
    return pending_count(conn, gateway_id)


def record_heartbeats(conn: psycopg.Connection, health: dict[int, tuple[int | None, int | None, int | None]]) -> int:
    """Record gateways' heartbeats (gateway id -> battery, signal, queue; None keeps the stored
    value) in one statement, marking them online; return how many rows it changed. Several
    rows are locked in id order first, the order the report path takes: no lock cycles. (FOR NO
    KEY UPDATE, the lock the UPDATE itself takes: FOR UPDATE would also hold up every insert of a
    message handed to one of these phones, whose foreign key checks the row with KEY SHARE.)"""
    ids = sorted(health)
    if len(ids) > 1:
        conn.execute("SELECT 1 FROM gateways WHERE id = ANY(%b::bigint[]) ORDER BY id FOR NO KEY UPDATE", (ids,))
    return conn.execute(
        "UPDATE gateways g SET status = 'online', last_heartbeat_at = now(), updated_at = now(),"
        " battery_level = COALESCE(h.battery, g.battery_level),"
        " signal_strength = COALESCE(h.signal, g.signal_strength),"
        " messages_in_queue = COALESCE(h.queue, g.messages_in_queue)"
        " FROM unnest(%b::bigint[], %b::int[], %b::int[], %b::int[]) AS h(id, battery, signal, queue)"
        " WHERE g.id = h.id",
        (ids, *([health[i][k] for i in ids] for k in range(3))),
    ).rowcount


def pending_count(conn: psycopg.Connection, gateway_id: int) -> int:
    """Messages assigned to this gateway and not yet sent (a queued message has no gateway
    yet). Served by the partial index on dispatched rows: the count used to scan the table on
    every heartbeat."""
    return conn.execute(
        "SELECT count(*) AS n FROM messages WHERE gateway_id = %s AND status = 'dispatched'",
        (gateway_id,),
    ).fetchone()["n"]


def get(conn: psycopg.Connection, gateway_id: int) -> dict | None:
    return conn.execute(f"SELECT {PUBLIC_COLUMNS} FROM gateways WHERE id = %s", (gateway_id,)).fetchone()


def get_by_device(conn: psycopg.Connection, device_id: str) -> dict | None:
    return conn.execute(f"SELECT {PUBLIC_COLUMNS} FROM gateways WHERE device_id = %s", (device_id,)).fetchone()


def list_gateways(conn: psycopg.Connection, *, status: str | None = None, active: bool | None = None,
                  ids: list[int] | None = None, limit: int = 100, offset: int = 0) -> tuple[list[dict], int]:
    """Gateways by priority then id, filtered; return the page and the total count."""
    where, params = ["true"], []
    if status is not None:
        where.append("status = %s")
        params.append(status)
    if active is not None:
        where.append("active = %s")
        params.append(active)
    if ids is not None:
        where.append("id = ANY(%s)")
        params.append(ids)
    clause = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM gateways WHERE {clause}", params).fetchone()["n"]
    rows = conn.execute(
        f"SELECT {PUBLIC_COLUMNS} FROM gateways WHERE {clause} ORDER BY priority, id LIMIT %s OFFSET %s",
        [*params, limit, offset],
    ).fetchall()
    return rows, total


def toggle(conn: psycopg.Connection, gateway_id: int) -> dict | None:
    """Flip `active`; a deactivated gateway's unsent messages go back to the queue.

    Messages are locked before the gateway row, the order the report path takes."""
    current = conn.execute("SELECT active FROM gateways WHERE id = %s", (gateway_id,)).fetchone()
    if current is None:
        return None
    if current["active"]:
        requeue_unsent(conn, gateway_id)
    return conn.execute(
        "UPDATE gateways SET active = NOT active, updated_at = now() WHERE id = %s"
        " RETURNING id, device_id, active",
        (gateway_id,),
    ).fetchone()


def update(conn: psycopg.Connection, gateway_id: int, changes: dict) -> dict | None:
    """Apply admin changes (name, priority, active, send_rate_per_minute, metadata)."""
    allowed = {"name", "priority", "active", "send_rate_per_minute", "metadata"}
    fields = {k: v for k, v in changes.items() if k in allowed}
    if fields:
        if fields.get("active") is False:
            requeue_unsent(conn, gateway_id)  # messages first, then the gateway row
        sets = ", ".join(f"{name} = %s" for name in fields)
        values = [Jsonb(v) if name == "metadata" else v for name, v in fields.items()]
        row = conn.execute(
            f"UPDATE gateways SET {sets}, updated_at = now() WHERE id = %s RETURNING active",
            [*values, gateway_id],
        ).fetchone()
        if row is None:
            return None
    return get(conn, gateway_id)


def requeue_unsent(conn: psycopg.Connection, gateway_id: int) -> int:
    """Return this gateway's dispatched-but-unsent messages to the queue for another gateway."""
    return requeue(conn, "gateway_id = %s", [gateway_id], avoid_gateway_id=gateway_id)


def mark_online(conn: psycopg.Connection, gateway: dict, lease: str) -> bool:
    """A phone subscribed on connection `lease`: take back what its older connections held,
    mark it online and, when it was offline, emit `gateway_online`; True in that case."""
    take_back_stale(conn, gateway["id"], lease)
    before = _set_status(conn, gateway["id"], "online")
    came_online = before is not None and before != "online"
    if came_online:
        _emit_presence(conn, "gateway_online", gateway)
    return came_online


def _set_status(conn: psycopg.Connection, gateway_id: int, status: str) -> str | None:
    """Set the gateway's presence (online also stamps the heartbeat); return the status it had,
    or None when there is no such gateway."""
    stamp = ", last_heartbeat_at = now()" if status == "online" else ""
    row = conn.execute(
        f"UPDATE gateways g SET status = %s{stamp}, updated_at = now()"
        " FROM (SELECT status FROM gateways WHERE id = %s FOR NO KEY UPDATE) old WHERE g.id = %s"
        " RETURNING old.status",
        (status, gateway_id, gateway_id),
    ).fetchone()
    return None if row is None else row["status"]


def mark_offline(conn: psycopg.Connection, gateway: dict) -> bool:
    """Mark offline and requeue its unsent messages; when it was online, emit
    `gateway_offline` and return True. The one way a gateway goes offline (socket closed,
    health job, a dead node's sweep).

    Messages are locked before the gateway row, the order the report path takes."""
    requeue_unsent(conn, gateway["id"])
    went_offline = _set_status(conn, gateway["id"], "offline") == "online"
    if went_offline:
        _emit_presence(conn, "gateway_offline", gateway)
    return went_offline


def _emit_presence(conn: psycopg.Connection, event: str, gateway: dict) -> None:
    emit(conn, event, {"gateway_id": gateway["device_id"], "name": gateway["name"],
                       "status": "online" if event == "gateway_online" else "offline"})


def reset_daily_counters(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE gateways SET messages_sent_today = 0, messages_received_today = 0")


def orphan_candidates(conn: psycopg.Connection, stale_seconds: float) -> tuple[list[tuple[int, str]], list[int]]:
    """For the backplane's sweep of dead nodes: (gateway id, lease) of every connection holding
    dispatched messages, and the gateways marked online with no heartbeat for `stale_seconds`."""
    leases = conn.execute(
        "SELECT DISTINCT gateway_id, lease FROM messages WHERE status = 'dispatched' AND lease IS NOT NULL"
    ).fetchall()
    stale = conn.execute(
        "SELECT id FROM gateways WHERE status = 'online'"
        " AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => %s))",
        (stale_seconds,),
    ).fetchall()
    return [(r["gateway_id"], r["lease"]) for r in leases], [r["id"] for r in stale]


def reclaim_orphans(conn: psycopg.Connection, orphans: list[tuple[int, str]], gone: list[int],
                    stale_seconds: float) -> tuple[int, list[dict]]:
    """Requeue what the `orphans` connections held; mark the `gone` gateways offline (with
    `gateway_offline`) if they are still silent: a phone that reconnected meanwhile has a fresh
    heartbeat and is left alone. Return how many messages, and the gateways marked offline."""
    requeued = sum(requeue_lease(conn, gateway_id, lease) for gateway_id, lease in orphans)
    rows = conn.execute(
        "SELECT id, device_id, name FROM gateways WHERE id = ANY(%s) AND status = 'online'"
        " AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => %s))"
        " ORDER BY id FOR UPDATE SKIP LOCKED",
        (list(gone), stale_seconds),
    ).fetchall() if gone else []
    offline = []
    for row in rows:
        if mark_offline(conn, row):
            offline.append(row)
    return requeued, offline
