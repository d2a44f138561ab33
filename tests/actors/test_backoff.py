"""Retry schedules, exponential restarts and the restart window."""

import math

import pytest

from actors.backoff import (
    SMS_RETRY_SCHEDULE,
    WEBHOOK_RETRY_SCHEDULE,
    RestartWindow,
    exponential_delay,
    scheduled_delay,
)


def fixed(value):
    return lambda: value


def never():
    raise AssertionError("rand must not be called")


SCHEDULED = [
    # (id, schedule, attempt, rand value, jitter, expected)
    ("sms first, no jitter draw", SMS_RETRY_SCHEDULE, 1, 0.5, 0.1, 30.0),
    ("sms second", SMS_RETRY_SCHEDULE, 2, 0.5, 0.1, 120.0),
    ("sms third", SMS_RETRY_SCHEDULE, 3, 0.5, 0.1, 480.0),
    ("sms lowest jitter", SMS_RETRY_SCHEDULE, 1, 0.0, 0.1, 27.0),
    ("sms near highest jitter", SMS_RETRY_SCHEDULE, 3, 0.999999, 0.1, 527.9999),
    ("sms quarter", SMS_RETRY_SCHEDULE, 2, 0.25, 0.1, 114.0),
    ("jitter 0 ignores rand", SMS_RETRY_SCHEDULE, 2, 0.0, 0.0, 120.0),
    ("jitter 0.5", SMS_RETRY_SCHEDULE, 1, 0.0, 0.5, 15.0),
    ("webhook first", WEBHOOK_RETRY_SCHEDULE, 1, 0.5, 0.1, 10.0),
    ("webhook last", WEBHOOK_RETRY_SCHEDULE, 7, 0.5, 0.1, 43200.0),
    ("webhook last low", WEBHOOK_RETRY_SCHEDULE, 7, 0.0, 0.1, 38880.0),
    ("custom schedule", (1.0, 2.0), 2, 1.0 / 4, 0.2, 1.8),
]


@pytest.mark.parametrize(
    ("schedule", "attempt", "rand_value", "jitter", "expected"),
    [case[1:] for case in SCHEDULED],
    ids=[case[0] for case in SCHEDULED],
)
def test_scheduled_delay(schedule, attempt, rand_value, jitter, expected):
    delay = scheduled_delay(schedule, attempt, rand=fixed(rand_value), jitter=jitter)
    assert delay == pytest.approx(expected, abs=1e-3)


GIVE_UP = [
    ("sms after 3", SMS_RETRY_SCHEDULE, 4),
    ("sms far beyond", SMS_RETRY_SCHEDULE, 100),
    ("webhook after 7", WEBHOOK_RETRY_SCHEDULE, 8),
    ("empty schedule", (), 1),
]


@pytest.mark.parametrize(
    ("schedule", "attempt"),
    [case[1:] for case in GIVE_UP],
    ids=[case[0] for case in GIVE_UP],
)
def test_scheduled_delay_gives_up(schedule, attempt):
    assert scheduled_delay(schedule, attempt, rand=never) is None


BAD_ARGUMENTS = [
    ("attempt 0", {"attempt": 0}),
    ("attempt negative", {"attempt": -1}),
    ("jitter negative", {"attempt": 1, "jitter": -0.1}),
    ("jitter above 1", {"attempt": 1, "jitter": 1.5}),
]


@pytest.mark.parametrize(
    "kwargs", [case[1] for case in BAD_ARGUMENTS], ids=[c[0] for c in BAD_ARGUMENTS]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        scheduled_delay(SMS_RETRY_SCHEDULE, rand=fixed(0.5), **kwargs)
    with pytest.raises(ValueError):
        exponential_delay(base=1.0, cap=60.0, rand=fixed(0.5), **kwargs)


EXPONENTIAL = [
    # (id, attempt, base, cap, rand value, jitter, expected)
    ("first is base", 1, 1.0, 60.0, 0.5, 0.1, 1.0),
    ("second doubles", 2, 1.0, 60.0, 0.5, 0.1, 2.0),
    ("sixth", 6, 1.0, 60.0, 0.5, 0.1, 32.0),
    ("seventh capped", 7, 1.0, 60.0, 0.5, 0.1, 60.0),
    ("huge attempt capped", 10_000, 1.0, 60.0, 0.5, 0.1, 60.0),
    ("other base", 3, 0.5, 60.0, 0.5, 0.1, 2.0),
    ("jitter low before cap", 3, 1.0, 60.0, 0.0, 0.1, 3.6),
    ("jitter low after cap", 9, 1.0, 60.0, 0.0, 0.1, 54.0),
    ("jitter above cap", 9, 1.0, 60.0, 0.75, 0.1, 63.0),
    ("no jitter", 4, 1.0, 60.0, 0.9, 0.0, 8.0),
]


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "rand_value", "jitter", "expected"),
    [case[1:] for case in EXPONENTIAL],
    ids=[case[0] for case in EXPONENTIAL],
)
def test_exponential_delay(attempt, base, cap, rand_value, jitter, expected):
    delay = exponential_delay(
        attempt, base=base, cap=cap, rand=fixed(rand_value), jitter=jitter
    )
    assert delay == pytest.approx(expected)
    assert math.isfinite(delay)


RESTARTS = [
    # (id, max_restarts, window, restart times, expected results)
    ("under the limit", 3, 10.0, [0.0, 1.0, 2.0], [True, True, True]),
    ("one too many", 3, 10.0, [0.0, 1.0, 2.0, 3.0], [True, True, True, False]),
    ("same instant", 2, 10.0, [5.0, 5.0, 5.0], [True, True, False]),
    ("spread out", 1, 10.0, [0.0, 11.0, 22.0, 33.0], [True] * 4),
    ("edge of window counts", 1, 10.0, [0.0, 10.0], [True, False]),
    ("just past the window", 1, 10.0, [0.0, 10.001], [True, True]),
    ("zero allowed", 0, 10.0, [0.0], [False]),
    ("zero allowed, still", 0, 10.0, [0.0, 100.0], [False, False]),
    (
        "old restarts expire",
        2,
        5.0,
        [0.0, 1.0, 6.5, 7.0, 7.5],
        [True, True, True, True, False],
    ),
    (
        "burst after quiet",
        2,
        5.0,
        [0.0, 1.0, 100.0, 100.1, 100.2],
        [True, True, True, True, False],
    ),
    (
        "recovers once the burst ages",
        1,
        5.0,
        [0.0, 1.0, 2.0, 8.0],
        [True, False, False, True],
    ),
]


@pytest.mark.parametrize(
    ("max_restarts", "window", "times", "expected"),
    [case[1:] for case in RESTARTS],
    ids=[case[0] for case in RESTARTS],
)
def test_restart_window(max_restarts, window, times, expected):
    restarts = RestartWindow(max_restarts=max_restarts, window=window)
    assert [restarts.record(now) for now in times] == expected


def test_restart_window_memory_is_bounded():
    restarts = RestartWindow(max_restarts=3, window=1e9)
    for now in range(10_000):
        restarts.record(float(now))
    assert len(restarts._times) == 4


@pytest.mark.parametrize(
    ("max_restarts", "window"), [(-1, 10.0), (3, 0.0), (3, -5.0)]
)
def test_restart_window_rejects_bad_limits(max_restarts, window):
    with pytest.raises(ValueError):
        RestartWindow(max_restarts=max_restarts, window=window)
