"""The pure report transition, as a table: every status against every report."""

from datetime import datetime, timezone

import pytest

from store.messages import UnknownMessage
from store.reports import Report, decide

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
EARLIER = datetime(2026, 1, 2, 3, 0, 0, tzinfo=timezone.utc)
GW = {"id": 7, "device_id": "phone-7"}


def row(status="dispatched", gateway_id=7, avoid=None, attempts=1, sent_at=None, error=None):
    return {"id": 1, "message_id": "msg_1", "status": status, "gateway_id": gateway_id,
            "avoid_gateway_id": avoid, "lease": "conn_x", "attempts": attempts, "api_key_id": 3,
            "phone_number": "+14155552671", "reference": None, "sent_at": sent_at, "delivered_at": None,
            "failed_at": None, "error_message": error, "not_before": None}


def retry_after(attempt):
    return 30.0 * attempt


@pytest.mark.parametrize("before, report, status, changed, events, sent, failed", [
    (row(), "sent", "sent", True, ("sms_sent",), True, False),
    (row(), "delivered", "delivered", True, ("sms_sent", "sms_delivered"), True, False),
    (row(status="sent", sent_at=EARLIER), "delivered", "delivered", True, ("sms_delivered",), False, False),
    (row(status="sent", sent_at=EARLIER), "sent", "sent", False, (), False, False),
    (row(status="delivered", sent_at=EARLIER), "sent", "delivered", False, (), False, False),
    (row(status="delivered", sent_at=EARLIER), "failed", "delivered", False, (), False, False),
    (row(status="failed"), "delivered", "failed", False, (), False, False),
    (row(status="cancelled"), "sent", "cancelled", False, (), False, False),
    (row(attempts=1), "failed", "queued", True, (), False, False),
    (row(attempts=3), "failed", "failed", True, ("sms_failed",), False, True),
    (row(status="queued", gateway_id=None, avoid=7), "failed", "queued", False, (), False, False),
    (row(status="dispatched", gateway_id=9, avoid=7), "delivered", "dispatched", False, (), False, False),
])
def test_transition_table(before, report, status, changed, events, sent, failed):
    step = decide(before, Report(GW, "msg_1", report, "no signal"), NOW, max_attempts=3, retry_delay=retry_after)
    assert (step.outcome.status, step.outcome.changed, step.events, step.sent, step.failed) == \
        (status, changed, events, sent, failed)
    assert step.row["status"] == status


def test_timestamps_are_set_by_the_transition_that_reaches_them():
    step = decide(row(), Report(GW, "msg_1", "delivered"), NOW, max_attempts=3, retry_delay=retry_after)
    assert step.row["sent_at"] == NOW and step.row["delivered_at"] == NOW
    later = decide(row(status="sent", sent_at=EARLIER), Report(GW, "msg_1", "delivered"), NOW,
                   max_attempts=3, retry_delay=retry_after)
    assert later.row["sent_at"] == EARLIER and later.row["delivered_at"] == NOW


def test_a_retried_failure_leaves_the_gateway_and_waits_its_backoff():
    step = decide(row(attempts=2), Report(GW, "msg_1", "failed", "radio off"), NOW, max_attempts=3,
                  retry_delay=retry_after)
    assert step.outcome.requeued
    after = step.row
    assert after["gateway_id"] is None and after["avoid_gateway_id"] == 7 and after["lease"] is None
    assert (after["not_before"] - NOW).total_seconds() == 60.0
    assert after["error_message"] == "radio off"


def test_a_final_failure_keeps_the_last_error():
    step = decide(row(attempts=3, error="earlier"), Report(GW, "msg_1", "failed", "radio off"), NOW,
                  max_attempts=3, retry_delay=retry_after)
    assert step.row["error_message"] == "radio off" and step.row["failed_at"] == NOW


def test_no_retry_when_the_schedule_gives_up():
    step = decide(row(attempts=1), Report(GW, "msg_1", "failed"), NOW, max_attempts=3, retry_delay=lambda a: None)
    assert step.outcome.status == "failed" and step.row["error_message"] == "failed"


@pytest.mark.parametrize("before", [row(gateway_id=9), row(gateway_id=None, avoid=8)])
def test_another_gateways_message_is_unknown(before):
    with pytest.raises(UnknownMessage):
        decide(before, Report(GW, "msg_1", "sent"), NOW, max_attempts=3, retry_delay=retry_after)


def test_decide_does_not_modify_its_input():
    before = row()
    snapshot = dict(before)
    decide(before, Report(GW, "msg_1", "delivered"), NOW, max_attempts=3, retry_delay=retry_after)
    assert before == snapshot
