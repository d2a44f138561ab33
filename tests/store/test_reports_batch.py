"""One batch of reports against the real database: order, repeats, unknowns, counters, events."""

import psycopg
from psycopg.rows import dict_row

from store.messages import UnknownMessage
from store.reports import Report, apply_reports
from tests.conftest import clean, sql


def setup(url):
    clean(url)
    sql(url, "INSERT INTO gateways (id, device_id, name) VALUES (1, 'p1', 'P1'), (2, 'p2', 'P2')")
    sql(url, "INSERT INTO webhooks (url, events) VALUES ('http://127.0.0.1:9/x', '{sms_sent,sms_delivered,sms_failed}')")
    for mid, gw in (("msg_a", 1), ("msg_b", 1), ("msg_c", 2)):
        sql(url, "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id, attempts)"
                 " VALUES (%s, 'outbound', 'dispatched', '+14155552671', 'x', %s, 1)", (mid, gw))


def test_a_batch_applies_each_report_in_order(database_url):
    setup(database_url)
    p1, p2 = {"id": 1, "device_id": "p1"}, {"id": 2, "device_id": "p2"}
    reports = [Report(p1, "msg_a", "sent"), Report(p1, "msg_a", "delivered"), Report(p1, "msg_a", "sent"),
               Report(p1, "msg_c", "delivered"),  # another gateway's message
               Report(p1, "msg_zzz", "sent"),
               Report(p1, "msg_b", "failed", "boom"),
               Report(p2, "msg_c", "delivered")]
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.execute("SELECT set_config('smsgw.day_zone', 'UTC', false)")
        outcomes = apply_reports(conn, reports, max_attempts=1, retry_delay=lambda a: 0.0)
        conn.commit()
    kinds = [o.status if not isinstance(o, UnknownMessage) else "unknown" for o in outcomes]
    assert kinds == ["sent", "delivered", "delivered", "unknown", "unknown", "failed", "delivered"]
    assert [getattr(o, "changed", None) for o in outcomes] == [True, True, False, None, None, True, True]
    rows = {r["message_id"]: r for r in sql(database_url, "SELECT * FROM messages")}
    assert rows["msg_a"]["status"] == "delivered" and rows["msg_a"]["sent_at"] is not None
    assert rows["msg_b"]["status"] == "failed" and rows["msg_b"]["error_message"] == "boom"
    assert rows["msg_c"]["status"] == "delivered"
    counts = {r["id"]: r["total_messages_sent"] for r in sql(database_url, "SELECT id, total_messages_sent FROM gateways")}
    assert counts == {1: 1, 2: 1}
    events = sorted(r["event"] for r in sql(database_url, "SELECT event FROM webhook_deliveries"))
    assert events == ["sms_delivered", "sms_delivered", "sms_failed", "sms_sent", "sms_sent"]
    assert sql(database_url, "SELECT value FROM daily_counters WHERE name = 'sms_failed'")[0]["value"] == 1


async def test_a_deadlocked_transaction_is_retried_whole(database_url):
    from psycopg.errors import DeadlockDetected

    from store.pool import open_store
    clean(database_url)
    tries = []

    def flaky(conn):
        tries.append(1)
        conn.execute("INSERT INTO daily_counters (day, name, value) VALUES (current_date, 'probe', 1)")
        if len(tries) < 3:
            raise DeadlockDetected("deadlock detected (simulated)")
        return "committed"

    async with open_store(database_url) as store:
        assert await store.run(flaky) == "committed"
    assert len(tries) == 3
    assert sql(database_url, "SELECT value FROM daily_counters WHERE name = 'probe'") == [{"value": 1}]


def test_stamps_written_are_the_ones_decide_computed(database_url):
    """The short UPDATE for sent/delivered writes what `decide` gave, including a retried
    message that kept the `sent_at` of an earlier attempt."""
    setup(database_url)
    earlier = "2026-01-01T00:00:00Z"
    sql(database_url, "UPDATE messages SET sent_at = %s WHERE message_id IN ('msg_a', 'msg_b')", (earlier,))
    p1, p2 = {"id": 1, "device_id": "p1"}, {"id": 2, "device_id": "p2"}
    reports = [Report(p1, "msg_a", "sent"), Report(p1, "msg_a", "delivered"),  # sent again now
               Report(p1, "msg_b", "delivered"),                                # keeps the earlier sent_at
               Report(p2, "msg_c", "sent")]
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.execute("SELECT set_config('smsgw.day_zone', 'UTC', false)")
        apply_reports(conn, reports, max_attempts=1, retry_delay=lambda a: 0.0)
        now = conn.execute("SELECT now() AS now").fetchone()["now"]
        conn.commit()
    rows = {r["message_id"]: r for r in sql(database_url, "SELECT * FROM messages")}
    assert (rows["msg_a"]["status"], rows["msg_a"]["sent_at"], rows["msg_a"]["delivered_at"]) == ("delivered", now, now)
    assert rows["msg_b"]["status"] == "delivered" and rows["msg_b"]["delivered_at"] == now
    assert rows["msg_b"]["sent_at"].isoformat() == "2026-01-01T00:00:00+00:00"
    assert (rows["msg_c"]["status"], rows["msg_c"]["sent_at"], rows["msg_c"]["delivered_at"]) == ("sent", now, None)
    assert all(r["updated_at"] == now for r in rows.values())
