"""The hot statements reach their rows through indexes, never by scanning the messages table.

The table grows by every message ever sent; a statement on a phone's or a report's path that
scans it costs more every day. psycopg prepares statements it runs often, and PostgreSQL may
then plan them without their parameters (a generic plan), which is where a status passed as a
parameter, or an extra predicate, turned index lookups into scans. Each statement here runs as
a prepared statement with a forced generic plan, and the transaction's own counters must show
no sequential scan of `messages`.
"""

import psycopg
import pytest
from psycopg.rows import dict_row

from store import gateways as gateways_store
from store import messages as messages_store
from store.reports import Report, apply_reports
from tests.conftest import clean, sql


@pytest.fixture
def big_table(database_url):
    clean(database_url)
    sql(database_url, "INSERT INTO gateways (id, device_id, name) SELECT n, 'p' || n, 'P' FROM generate_series(1, 20) n")
    sql(database_url, "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id, attempts)"
                      " SELECT 'msg_old' || n, 'outbound', 'delivered', '+14155552671', 'x', 1 + mod(n, 20), 1"
                      " FROM generate_series(1, 20000) n")
    sql(database_url, "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id, lease, attempts)"
                      " SELECT 'msg_new' || n, 'outbound', 'dispatched', '+14155552671', 'x', 1, 'conn_a', 1"
                      " FROM generate_series(1, 5) n")
    sql(database_url, "INSERT INTO messages (message_id, direction, status, phone_number, body)"
                      " SELECT 'msg_q' || n, 'outbound', 'queued', '+14155552671', 'x' FROM generate_series(1, 5) n")
    sql(database_url, "ANALYZE messages")
    return database_url


def scans_of_messages(url, work) -> int:
    with psycopg.connect(url, row_factory=dict_row, prepare_threshold=0) as conn:
        conn.execute("SELECT set_config('smsgw.day_zone', 'UTC', false)")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        work(conn)
        scans = conn.execute("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'messages'").fetchone()
        conn.rollback()
    return scans["seq_scan"]


@pytest.mark.parametrize("name, work", [
    ("a batch of reports", lambda conn: apply_reports(
        conn, [Report({"id": 1, "device_id": "p1"}, "msg_new1", "sent"),
               Report({"id": 1, "device_id": "p1"}, "msg_new2", "delivered")],
        max_attempts=3, retry_delay=lambda attempt: 30.0)),
    ("a connection's messages back to the queue", lambda conn: messages_store.requeue_lease(conn, 1, "conn_a")),
    ("a newer connection takes back older ones'", lambda conn: messages_store.take_back_stale(conn, 1, "conn_b")),
    ("a gateway's unsent messages back to the queue", lambda conn: gateways_store.requeue_unsent(conn, 1)),
    ("a heartbeat's pending count", lambda conn: gateways_store.heartbeat(
        conn, 1, battery_level=50, signal_strength=3, messages_in_queue=0)),
    ("the sweep's question", messages_store.any_due),
    ("a dispatch claim", lambda conn: messages_store.claim_for_dispatch(
        conn, 100, lambda due: [(row["message_id"], 2) for row in due], {2: "conn_c"})),
])
def test_hot_statements_do_not_scan_the_messages_table(big_table, name, work):
    for _ in range(2):  # the second time as a prepared statement already planned
        assert scans_of_messages(big_table, work) == 0, name
