"""The scheduler: its pure schedule (table tests), then its jobs on the real database."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import attrs
import psycopg
import pytest
import trio
import trio.testing

from actors.clock import WallClock
from actors.gateway import GatewayActor
from actors.registry import GatewayRegistry
from actors.node import Node
from actors.rates import TokenBucket
from actors.scheduler import JOBS, Scheduler, due_at, due_jobs, next_due
from config import load_settings
from store import webhooks as webhooks_store
from store.pool import open_store
from tests.conftest import clean, node_env, sql

UTC = timezone.utc
HEALTH, OTP, DAILY = "check_gateway_health", "cleanup_expired_otps", "reset_daily_counters"
_BY_NAME = {job.name: job for job in JOBS}


def at(text: str) -> datetime:
    """An ISO timestamp in UTC (`Z` implied)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# The pure schedule


@pytest.mark.parametrize(("case", "last_runs", "now", "zone", "expected"), [
    ("never ran: everything is due", {HEALTH: None, OTP: None, DAILY: None}, "2025-10-19T12:00:30", "UTC",
     [HEALTH, OTP, DAILY]),
    ("health ran this minute", {HEALTH: "2025-10-19T12:00:30"}, "2025-10-19T12:00:59", "UTC", []),
    ("health: next minute boundary", {HEALTH: "2025-10-19T12:00:30"}, "2025-10-19T12:01:00", "UTC", [HEALTH]),
    ("health: ten missed minutes are one run", {HEALTH: "2025-10-19T11:50:00"}, "2025-10-19T12:00:01", "UTC",
     [HEALTH]),
    ("otp: quarter-hour boundary", {OTP: "2025-10-19T12:14:59"}, "2025-10-19T12:15:00", "UTC", [OTP]),
    ("otp: ran on the boundary", {OTP: "2025-10-19T12:15:00"}, "2025-10-19T12:29:59", "UTC", []),
    ("daily: UTC midnight", {DAILY: "2025-10-19T23:59:00"}, "2025-10-20T00:00:00", "UTC", [DAILY]),
    ("daily: ran just after midnight", {DAILY: "2025-10-20T00:00:01"}, "2025-10-20T23:59:59", "UTC", []),
    ("daily: three missed midnights, one run", {DAILY: "2025-10-16T22:00:00"}, "2025-10-19T09:00:00", "UTC",
     [DAILY]),
    ("daily: New York midnight (EDT)", {DAILY: "2025-10-20T03:59:00"}, "2025-10-20T04:00:00",
     "America/New_York", [DAILY]),
    ("daily: UTC midnight is not New York's", {DAILY: "2025-10-19T23:59:00"}, "2025-10-20T00:00:30",
     "America/New_York", []),
    ("daily: New York's 04:00 UTC is not UTC midnight", {DAILY: "2025-10-20T03:59:00"}, "2025-10-20T04:00:00",
     "UTC", []),
    ("daily: Kathmandu (+05:45) midnight", {DAILY: "2025-10-19T18:14:00"}, "2025-10-19T18:15:00",
     "Asia/Kathmandu", [DAILY]),
    ("daily: New York after fall-back, one minute early", {DAILY: "2025-11-02T04:30:00"},
     "2025-11-03T04:59:00", "America/New_York", []),
    ("daily: New York after fall-back, midnight EST", {DAILY: "2025-11-02T04:30:00"},
     "2025-11-03T05:00:00", "America/New_York", [DAILY]),
    ("all ran recently", {HEALTH: "2025-10-19T12:00:00", OTP: "2025-10-19T12:00:00", DAILY: "2025-10-19T00:00:00"},
     "2025-10-19T12:00:59", "UTC", []),
])
def test_due_jobs(case, last_runs, now, zone, expected):
    """Jobs the row leaves out ran at `now`; None is a job that never ran."""
    runs = {job.name: at(now) for job in JOBS}
    runs.update({name: at(value) if value else None for name, value in last_runs.items()})
    assert due_jobs(runs, at(now), ZoneInfo(zone)) == expected, case


@pytest.mark.parametrize(("last_runs", "now", "zone", "expected"), [
    ({HEALTH: "2025-10-19T12:00:30", OTP: "2025-10-19T12:00:30", DAILY: "2025-10-19T00:00:00"},
     "2025-10-19T12:00:40", "UTC", "2025-10-19T12:01:00"),
    ({HEALTH: "2025-10-19T23:59:30", OTP: "2025-10-19T23:59:30", DAILY: "2025-10-19T00:00:00"},
     "2025-10-19T23:59:40", "UTC", "2025-10-20T00:00:00"),
    ({HEALTH: None, OTP: "2025-10-19T12:00:30", DAILY: "2025-10-19T00:00:00"},
     "2025-10-19T12:00:40", "UTC", "2025-10-19T12:00:40"),
    ({HEALTH: "2025-10-19T12:00:00", OTP: "2025-10-19T12:00:00", DAILY: "2025-10-19T12:00:00"},
     "2025-10-19T12:00:10", "Asia/Tokyo", "2025-10-19T12:01:00"),
    ({HEALTH: "2025-10-19T14:59:59", OTP: "2025-10-19T14:59:59", DAILY: "2025-10-19T10:00:00"},
     "2025-10-19T15:00:00", "Asia/Tokyo", "2025-10-19T15:00:00"),  # Tokyo midnight is 15:00 UTC
])
def test_next_due(last_runs, now, zone, expected):
    runs = {name: at(value) if value else None for name, value in last_runs.items()}
    assert next_due(runs, at(now), ZoneInfo(zone)) == at(expected)


@pytest.mark.parametrize(("job", "last", "zone", "expected"), [
    (HEALTH, "2025-10-19T12:00:00", "UTC", "2025-10-19T12:01:00"),
    (OTP, "2025-10-19T12:00:00", "UTC", "2025-10-19T12:15:00"),
    (OTP, "2025-10-19T12:44:59", "UTC", "2025-10-19T12:45:00"),
    (DAILY, "2025-10-19T00:00:00", "UTC", "2025-10-20T00:00:00"),
    (DAILY, "2025-03-08T12:00:00", "America/New_York", "2025-03-09T05:00:00"),  # EST midnight before spring-forward
    (DAILY, "2025-03-09T12:00:00", "America/New_York", "2025-03-10T04:00:00"),  # EDT from then on
])
def test_due_at(job, last, zone, expected):
    assert due_at(_BY_NAME[job], at(last), ZoneInfo(zone)) == at(expected)


def test_a_job_that_never_ran_is_due_at_once():
    assert due_at(_BY_NAME[DAILY], None, ZoneInfo("UTC")) is None


# ---------------------------------------------------------------------------------------------
# The actor on the real database


@attrs.define
class WakeCounter:
    """Stands in for the dispatcher: the scheduler only calls its wake()."""

    wakes: int = 0

    def wake(self) -> None:
        self.wakes += 1


@attrs.define
class OtpStandIn:
    """Stands in for the OTP actor (tested on its own); counts the scheduler's calls."""

    cleanups: int = 0

    async def cleanup_expired(self) -> int:
        self.cleanups += 1
        return 0


@asynccontextmanager
async def scheduler_at(database_url: str, wall: datetime, *, zone: str = "UTC", otp=None):
    """A scheduler over the test database whose wall clock starts at `wall` and moves with Trio's."""
    settings = load_settings(node_env(database_url, TZ_DAILY_RESET=zone))
    async with open_store(database_url, size=4, day_zone=zone) as store:
        node = Node(settings=settings, store=store)
        node.gateways = GatewayRegistry(default_rate_per_minute=0)
        node.dispatcher = WakeCounter()
        node.otp = otp
        yield Scheduler(node=node, now=WallClock(anchor_wall=wall).now)


def add_gateway(url: str, device_id: str, *, status: str = "online", heartbeat_ago: str | None = "3 minutes",
                sent_today: int = 0) -> int:
    heartbeat = f"now() - interval '{heartbeat_ago}'" if heartbeat_ago else "NULL"
    return sql(url, "INSERT INTO gateways (device_id, name, status, last_heartbeat_at, messages_sent_today,"
                    f" messages_received_today) VALUES (%s, %s, %s, {heartbeat}, %s, %s) RETURNING id",
               (device_id, f"Phone {device_id}", status, sent_today, sent_today))[0]["id"]


def add_message(url: str, status: str, *, gateway_id: int | None = None, send_at: str = "NULL",
                expires_at: str = "now() + interval '1 day'") -> str:
    return sql(url, "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id,"
                    f" send_at, expires_at) VALUES ('msg_' || md5(random()::text), 'outbound', %s, '+14155552671',"
                    f" 'hi', %s, {send_at}, {expires_at}) RETURNING message_id",
               (status, gateway_id))[0]["message_id"]


def live_actor(gateway_id: int, device_id: str) -> GatewayActor:
    async def send_text(_: str) -> None:
        return None

    return GatewayActor(gateway_id=gateway_id, device_id=device_id, send_text=send_text, active=True,
                        priority=1, bucket=TokenBucket.full(0, trio.current_time()))


def last_run(url: str, job: str) -> datetime | None:
    rows = sql(url, "SELECT last_run_at FROM scheduler_runs WHERE job = %s", (job,))
    return rows[0]["last_run_at"] if rows else None


async def test_silent_gateway_goes_offline_and_its_messages_return_to_the_queue(database_url):
    clean(database_url)
    silent = add_gateway(database_url, "silent")
    fresh = add_gateway(database_url, "fresh", heartbeat_ago="10 seconds")
    held = add_message(database_url, "dispatched", gateway_id=silent)
    sql(database_url, "INSERT INTO webhooks (url, events) VALUES ('http://127.0.0.1:9/hook', '{gateway_offline}')")
    async with scheduler_at(database_url, datetime.now(UTC)) as scheduler:
        assert await scheduler.run_job(HEALTH) == "ran"
        assert scheduler.node.dispatcher.wakes == 1
    states = {r["id"]: r["status"] for r in sql(database_url, "SELECT id, status FROM gateways")}
    assert states == {silent: "offline", fresh: "online"}
    message = sql(database_url, "SELECT status, gateway_id, avoid_gateway_id FROM messages WHERE message_id = %s",
                  (held,))[0]
    assert message == {"status": "queued", "gateway_id": None, "avoid_gateway_id": silent}
    events = sql(database_url, "SELECT event, payload FROM webhook_deliveries")
    assert [(e["event"], e["payload"]["gateway_id"], e["payload"]["status"]) for e in events] == [
        ("gateway_offline", "silent", "offline")]


async def test_silent_gateway_with_a_socket_on_this_node_stays_online(database_url):
    clean(database_url)
    quiet = add_gateway(database_url, "quiet-but-connected")
    async with scheduler_at(database_url, datetime.now(UTC)) as scheduler:
        scheduler.node.gateways.attach(live_actor(quiet, "quiet-but-connected"))
        assert await scheduler.run_job(HEALTH) == "ran"
        assert scheduler.node.dispatcher.wakes == 0
    assert sql(database_url, "SELECT status FROM gateways")[0]["status"] == "online"
    assert sql(database_url, "SELECT count(*) AS n FROM webhook_deliveries")[0]["n"] == 0


async def test_job_is_skipped_while_another_node_holds_its_lock(database_url):
    clean(database_url)
    add_gateway(database_url, "silent")
    with psycopg.connect(database_url) as other_node:
        other_node.execute("SELECT pg_try_advisory_xact_lock(%s)", (_BY_NAME[HEALTH].lock_id,))
        async with scheduler_at(database_url, datetime.now(UTC)) as scheduler:
            assert await scheduler.run_job(HEALTH) == "busy"
            assert HEALTH not in scheduler.due()  # it looks again a few seconds later, not at once
        assert sql(database_url, "SELECT status FROM gateways")[0]["status"] == "online"
        other_node.rollback()
    assert last_run(database_url, HEALTH) is None


async def test_each_slot_runs_on_one_node_only(database_url):
    clean(database_url)
    wall = datetime.now(UTC)
    async with scheduler_at(database_url, wall) as first, scheduler_at(database_url, wall) as second:
        assert await first.run_job(DAILY) == "ran"
        add_gateway(database_url, "counted", sent_today=7)
        assert await second.run_job(DAILY) == "not_due"
        assert second.last_runs[DAILY] == first.last_runs[DAILY]
        assert DAILY not in second.due()
    assert sql(database_url, "SELECT messages_sent_today FROM gateways")[0]["messages_sent_today"] == 7


async def test_first_start_on_a_fresh_database_does_not_reset_counters(database_url):
    clean(database_url)
    add_gateway(database_url, "busy-phone", sent_today=12)
    async with scheduler_at(database_url, at("2025-10-19T12:00:30")) as scheduler:
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            nursery.cancel_scope.cancel()
    assert sql(database_url, "SELECT messages_sent_today FROM gateways")[0]["messages_sent_today"] == 12
    assert at("2025-10-19T12:00:30") <= last_run(database_url, DAILY) < at("2025-10-19T12:00:31")


@pytest.fixture
def minute_per_second_clock():
    """Trio time at 60x: a scheduler's minute passes in a real second, its DB calls stay real."""
    return trio.testing.MockClock(rate=60)


async def wait_until(predicate, timeout: float = 600.0):
    """Poll the database (under the 60x clock: 600 s of Trio time is 10 real seconds)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(1.0)


async def test_missed_midnight_is_caught_up_once_after_a_restart(database_url, minute_per_second_clock):
    clean(database_url)
    add_gateway(database_url, "phone", heartbeat_ago=None, sent_today=5)
    sql(database_url, "INSERT INTO scheduler_runs (job, last_run_at) VALUES (%s, %s), (%s, %s), (%s, %s)",
        (DAILY, at("2025-10-17T22:00:00"), HEALTH, at("2025-10-19T09:00:00"), OTP, at("2025-10-19T09:00:00")))
    async with scheduler_at(database_url, at("2025-10-19T09:00:10")) as scheduler:
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await wait_until(lambda: last_run(database_url, DAILY) != at("2025-10-17T22:00:00"))
            assert sql(database_url, "SELECT messages_sent_today FROM gateways")[0]["messages_sent_today"] == 0
            caught_up = last_run(database_url, DAILY)
            sql(database_url, "UPDATE gateways SET messages_sent_today = 3")
            await trio.sleep(125)  # two minutes later: the health job ran again, the daily one did not
            assert last_run(database_url, HEALTH) >= at("2025-10-19T09:02:00")
            nursery.cancel_scope.cancel()
    assert last_run(database_url, DAILY) == caught_up
    assert sql(database_url, "SELECT messages_sent_today FROM gateways")[0]["messages_sent_today"] == 3


async def test_counters_reset_at_midnight_in_tz_daily_reset(database_url, minute_per_second_clock):
    clean(database_url)
    add_gateway(database_url, "phone", heartbeat_ago=None, sent_today=9)
    # 23:58 in New York is 03:58 UTC; the UTC midnight four hours earlier did not count.
    start = at("2025-10-20T03:58:00")
    sql(database_url, "INSERT INTO scheduler_runs (job, last_run_at) VALUES (%s, %s)", (DAILY, at("2025-10-19T04:00:00")))
    async with scheduler_at(database_url, start, zone="America/New_York") as scheduler:
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await trio.sleep(100)  # 23:59:40 local
            assert sql(database_url, "SELECT messages_sent_today FROM gateways")[0]["messages_sent_today"] == 9
            await wait_until(lambda: last_run(database_url, DAILY) > at("2025-10-19T04:00:00"))
            nursery.cancel_scope.cancel()
    assert sql(database_url, "SELECT messages_sent_today FROM gateways")[0]["messages_sent_today"] == 0
    ran_at = last_run(database_url, DAILY)
    assert at("2025-10-20T04:00:00") <= ran_at < at("2025-10-20T04:00:30")


async def test_otp_cleanup_calls_the_otp_actor_and_purges_old_idempotency_keys(database_url):
    clean(database_url)
    key_id = sql(database_url, "INSERT INTO api_keys (kind, digest, prefix, name) VALUES"
                               " ('client', 'd1', 'api_live_x', 'k') RETURNING id")[0]["id"]
    sql(database_url, "INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response, created_at)"
                      " VALUES (%s, 'old', 'h', 202, '{}', now() - interval '25 hours'),"
                      " (%s, 'new', 'h', 202, '{}', now() - interval '23 hours')", (key_id, key_id))
    otp = OtpStandIn()
    async with scheduler_at(database_url, datetime.now(UTC), otp=otp) as scheduler:
        assert await scheduler.run_job(OTP) == "ran"
    assert otp.cleanups == 1
    assert [r["key"] for r in sql(database_url, "SELECT key FROM idempotency_keys")] == ["new"]


async def test_tick_releases_due_scheduled_messages_and_expires_stale_ones(database_url):
    clean(database_url)
    due = add_message(database_url, "scheduled", send_at="now() - interval '1 second'")
    later = add_message(database_url, "scheduled", send_at="now() + interval '1 hour'")
    stale = add_message(database_url, "queued", expires_at="now() - interval '1 second'")
    waiting = add_message(database_url, "queued")
    async with scheduler_at(database_url, datetime.now(UTC)) as scheduler:
        result = await scheduler.tick()
        assert (result.released, result.expired, result.queue_depth) == (1, 1, 2)
        assert scheduler.node.dispatcher.wakes == 1
        assert scheduler.metrics.registry.get_sample_value("smsgw_queue_depth") == 2
        assert scheduler.metrics.registry.get_sample_value(
            "smsgw_messages_total", {"direction": "outbound", "status": "expired"}) == 1
    rows = {r["message_id"]: (r["status"], r["error_message"])
            for r in sql(database_url, "SELECT message_id, status, error_message FROM messages")}
    assert rows == {due: ("queued", None), later: ("scheduled", None), stale: ("failed", "expired"),
                    waiting: ("queued", None)}


async def test_cleanup_prunes_finished_webhook_deliveries_past_a_week_and_keeps_pending(database_url):
    clean(database_url)
    key_id = sql(database_url, "INSERT INTO api_keys (kind, digest, prefix, name) VALUES"
                               " ('client', 'd1', 'api_live_x', 'k') RETURNING id")[0]["id"]
    hook = sql(database_url, "INSERT INTO webhooks (api_key_id, url, events) VALUES"
                             " (%s, 'http://127.0.0.1:9/x', '{sms_sent}') RETURNING id", (key_id,))[0]["id"]
    for event_id, status, age in (("old-delivered", "delivered", "8 days"), ("old-dead", "dead", "8 days"),
                                  ("old-pending", "pending", "8 days"), ("new-delivered", "delivered", "6 days")):
        sql(database_url, "INSERT INTO webhook_deliveries (webhook_id, event_id, event, payload, status, created_at)"
                          " VALUES (%s, %s, 'sms_sent', '{}', %s, now() - %s::interval)", (hook, event_id, status, age))
    async with scheduler_at(database_url, datetime.now(UTC), otp=OtpStandIn()) as scheduler:
        assert await scheduler.run_job(OTP) == "ran"
    left = sorted(r["event_id"] for r in sql(database_url, "SELECT event_id FROM webhook_deliveries"))
    assert left == ["new-delivered", "old-pending"]


def test_pruning_goes_in_chunks_and_stops_at_its_cap(database_url):
    clean(database_url)
    hook = sql(database_url, "INSERT INTO webhooks (url, events) VALUES ('http://127.0.0.1:9/x', '{sms_sent}')"
                             " RETURNING id")[0]["id"]
    sql(database_url, "INSERT INTO webhook_deliveries (webhook_id, event_id, event, payload, status, created_at)"
                      " SELECT %s, 'e' || n, 'sms_sent', '{}', 'delivered', now() - interval '30 days'"
                      " FROM generate_series(1, 25) AS n", (hook,))
    with psycopg.connect(database_url) as conn:
        assert webhooks_store.prune_finished(conn, chunk=10, max_chunks=2) == 20
        assert webhooks_store.prune_finished(conn, chunk=10, max_chunks=2) == 5
    assert sql(database_url, "SELECT count(*) AS n FROM webhook_deliveries")[0]["n"] == 0
