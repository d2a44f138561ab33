"""Token buckets and GCRA, driven by scripted timelines."""

import math

import pytest

from actors.rates import Gcra, RateDecision, TokenBucket

# A bucket scenario is a list of steps, each (operation, now, argument,
# expected): "take" -> try_take(argument), "wait" -> wait_time(argument),
# "avail" -> available(), "rate" -> set_rate(argument) (expected unused).
BUCKETS = [
    (
        "burst up to capacity, then refuse",
        (60.0, 0.0, None),
        [
            ("take", 0.0, 30, True),
            ("take", 0.0, 30, True),
            ("avail", 0.0, None, 0.0),
            ("take", 0.0, 1, False),
            ("wait", 0.0, 1, 1.0),
            ("wait", 0.0, 10, 10.0),
        ],
    ),
    (
        "refill over time",
        (60.0, 0.0, None),
        [
            ("take", 0.0, 60, True),
            ("avail", 10.0, None, 10.0),
            ("take", 10.0, 11, False),
            ("take", 10.0, 10, True),
            ("avail", 10.0, None, 0.0),
            ("avail", 40.0, None, 30.0),
        ],
    ),
    (
        "refill stops at capacity",
        (60.0, 0.0, None),
        [
            ("take", 0.0, 1, True),
            ("avail", 3600.0, None, 60.0),
            ("take", 3600.0, 60, True),
            ("avail", 3600.0, None, 0.0),
        ],
    ),
    (
        "custom capacity is the burst",
        (30.0, 0.0, 5.0),
        [
            ("avail", 0.0, None, 5.0),
            ("take", 0.0, 5, True),
            ("wait", 0.0, 3, 6.0),
            ("take", 5.9, 3, False),
            ("take", 6.0, 3, True),
        ],
    ),
    (
        "waiting exactly wait_time suffices despite rounding",
        (7.0, 0.0, None),
        [
            ("take", 0.0, 7, True),
            ("wait", 0.0, 3, 3 * 60 / 7),
            ("take", 3 * 60 / 7, 3, True),
        ],
    ),
    (
        "unlimited",
        (0.0, 0.0, None),
        [
            ("avail", 0.0, None, math.inf),
            ("take", 0.0, 1_000_000, True),
            ("take", 0.0, 1_000_000, True),
            ("wait", 0.0, 1_000_000, 0.0),
        ],
    ),
    (
        "oversize message needs a full bucket and empties it",
        (10.0, 0.0, None),
        [
            ("take", 0.0, 12, True),
            ("avail", 0.0, None, 0.0),
            ("take", 0.0, 12, False),
            ("wait", 0.0, 12, 60.0),
            ("take", 30.0, 12, False),
            ("wait", 30.0, 12, 30.0),
            ("take", 60.0, 12, True),
            ("avail", 60.0, None, 0.0),
        ],
    ),
    (
        "oversize never drives the bucket negative",
        (10.0, 0.0, None),
        [
            ("take", 0.0, 1, True),
            ("take", 0.0, 12, False),
            ("wait", 0.0, 12, 6.0),
            ("take", 6.0, 12, True),
            ("avail", 12.0, None, 1.0),
        ],
    ),
    (
        "zero tokens always pass",
        (10.0, 0.0, None),
        [("take", 0.0, 10, True), ("take", 0.0, 0, True), ("wait", 0.0, 0, 0.0)],
    ),
    (
        "clock going backwards does not refill",
        (60.0, 100.0, None),
        [
            ("take", 100.0, 60, True),
            ("avail", 50.0, None, 0.0),
            ("take", 50.0, 1, False),
            ("avail", 101.0, None, 1.0),
        ],
    ),
    (
        "rate cut clamps tokens",
        (60.0, 0.0, None),
        [
            ("rate", 0.0, 20.0, None),
            ("avail", 0.0, None, 20.0),
            ("take", 0.0, 15, True),
            ("take", 0.0, 6, False),
            ("wait", 0.0, 6, 3.0),
        ],
    ),
    (
        "rate raise keeps tokens, refills faster",
        (60.0, 0.0, None),
        [
            ("take", 0.0, 60, True),
            ("avail", 30.0, None, 30.0),
            ("rate", 30.0, 120.0, None),
            ("avail", 30.0, None, 30.0),
            ("avail", 45.0, None, 60.0),
            ("avail", 600.0, None, 120.0),
        ],
    ),
    (
        "limited to unlimited and back starts full",
        (60.0, 0.0, None),
        [
            ("take", 0.0, 60, True),
            ("rate", 0.0, 0.0, None),
            ("take", 0.0, 500, True),
            ("rate", 1.0, 30.0, None),
            ("avail", 1.0, None, 30.0),
        ],
    ),
]


@pytest.mark.parametrize(
    ("bucket_args", "steps"),
    [case[1:] for case in BUCKETS],
    ids=[case[0] for case in BUCKETS],
)
def test_token_bucket(bucket_args, steps):
    rate, start, capacity = bucket_args
    bucket = TokenBucket.full(rate, start, capacity)
    for number, (operation, now, argument, expected) in enumerate(steps):
        if operation == "take":
            got = bucket.try_take(argument, now)
        elif operation == "wait":
            got = bucket.wait_time(argument, now)
        elif operation == "avail":
            got = bucket.available(now)
        else:
            bucket.set_rate(argument, now)
            continue
        assert got == pytest.approx(expected), f"step {number}: {operation}"
        assert bucket.unlimited or bucket.tokens >= 0


@pytest.mark.parametrize(
    ("rate", "capacity"), [(-1.0, None), (10.0, 0.0), (10.0, -5.0)]
)
def test_token_bucket_rejects_bad_limits(rate, capacity):
    with pytest.raises(ValueError):
        TokenBucket.full(rate, 0.0, capacity)


def test_token_bucket_rejects_negative_take():
    with pytest.raises(ValueError):
        TokenBucket.full(10.0, 0.0).try_take(-1, 0.0)


def allowed(limit, remaining, reset_after):
    return RateDecision(True, limit, remaining, reset_after, 0.0)


def denied(limit, reset_after, retry_after):
    return RateDecision(False, limit, 0, reset_after, retry_after)


# A GCRA scenario: (limit, period, [(key, now, expected decision), ...]).
GCRAS = [
    (
        "burst of limit, then refused",
        (3, 60.0),
        [
            ("a", 0.0, allowed(3, 2, 20.0)),
            ("a", 0.0, allowed(3, 1, 40.0)),
            ("a", 0.0, allowed(3, 0, 60.0)),
            ("a", 0.0, denied(3, 60.0, 20.0)),
            ("a", 0.0, denied(3, 60.0, 20.0)),
        ],
    ),
    (
        "exact boundary: allowed at the instant, refused just before",
        (3, 60.0),
        [
            ("a", 0.0, allowed(3, 2, 20.0)),
            ("a", 0.0, allowed(3, 1, 40.0)),
            ("a", 0.0, allowed(3, 0, 60.0)),
            ("a", 19.5, denied(3, 40.5, 0.5)),
            ("a", 20.0, allowed(3, 0, 60.0)),
            ("a", 20.0, denied(3, 60.0, 20.0)),
        ],
    ),
    (
        "steady rate at the emission interval is never refused",
        (2, 1.0),
        [("a", t / 2, allowed(2, 1, 0.5)) for t in range(6)],
    ),
    (
        "full replenishment after one period",
        (3, 60.0),
        [
            ("a", 0.0, allowed(3, 2, 20.0)),
            ("a", 0.0, allowed(3, 1, 40.0)),
            ("a", 0.0, allowed(3, 0, 60.0)),
            ("a", 60.0, allowed(3, 2, 20.0)),
        ],
    ),
    (
        "partial replenishment",
        (4, 40.0),
        [
            ("a", 0.0, allowed(4, 3, 10.0)),
            ("a", 0.0, allowed(4, 2, 20.0)),
            ("a", 0.0, allowed(4, 1, 30.0)),
            ("a", 0.0, allowed(4, 0, 40.0)),
            ("a", 25.0, allowed(4, 1, 25.0)),
        ],
    ),
    (
        "keys are independent",
        (1, 10.0),
        [
            ("a", 0.0, allowed(1, 0, 10.0)),
            ("b", 0.0, allowed(1, 0, 10.0)),
            ("a", 5.0, denied(1, 5.0, 5.0)),
            ("b", 10.0, allowed(1, 0, 10.0)),
        ],
    ),
    (
        "inexact interval still allows at the boundary",
        (3, 1.0),
        [
            ("a", 0.0, allowed(3, 2, 1 / 3)),
            ("a", 0.0, allowed(3, 1, 2 / 3)),
            ("a", 0.0, allowed(3, 0, 1.0)),
            ("a", 1 / 3, allowed(3, 0, 1.0)),
            ("a", 2 / 3, allowed(3, 0, 1.0)),
        ],
    ),
    (
        "unlimited",
        (0, 60.0),
        [("a", 0.0, RateDecision(True, 0, 0, 0.0, 0.0))] * 5,
    ),
]


@pytest.mark.parametrize(
    ("limits", "steps"),
    [case[1:] for case in GCRAS],
    ids=[case[0] for case in GCRAS],
)
def test_gcra(limits, steps):
    limit, period = limits
    gcra = Gcra(limit=limit, period=period)
    for number, (key, now, expected) in enumerate(steps):
        got = gcra.check(key, now)
        assert got.allowed == expected.allowed, f"step {number}"
        assert got.limit == expected.limit, f"step {number}"
        assert got.remaining == expected.remaining, f"step {number}"
        assert got.reset_after == pytest.approx(expected.reset_after), number
        assert got.retry_after == pytest.approx(expected.retry_after), number


DECIDE = [
    # (id, tat, now, limit, period, allowed, new tat)
    ("unknown key", None, 100.0, 10, 60.0, True, 106.0),
    ("stale tat counts as now", 50.0, 100.0, 10, 60.0, True, 106.0),
    ("tat in the future", 130.0, 100.0, 10, 60.0, True, 136.0),
    ("at the edge", 154.0, 100.0, 10, 60.0, True, 160.0),
    ("over the edge keeps tat", 155.0, 100.0, 10, 60.0, False, 155.0),
    ("unlimited", None, 100.0, 0, 60.0, True, 100.0),
]


@pytest.mark.parametrize(
    ("tat", "now", "limit", "period", "is_allowed", "new_tat"),
    [case[1:] for case in DECIDE],
    ids=[case[0] for case in DECIDE],
)
def test_gcra_decide(tat, now, limit, period, is_allowed, new_tat):
    decision, tat_after = Gcra.decide(tat, now, limit, period)
    assert decision.allowed == is_allowed
    assert tat_after == pytest.approx(new_tat)


def test_denied_requests_are_not_stored():
    gcra = Gcra(limit=1, period=10.0)
    gcra.check("a", 0.0)
    for now in (1.0, 2.0, 3.0):
        assert not gcra.check("a", now).allowed
    assert gcra.check("a", 10.0).allowed  # denials did not push the TAT


EVICTIONS = [
    # (id, max_keys, [(key, now)] admitted first, probe key, probe now,
    #  whether the probe still sees its earlier usage, table size after)
    (
        "replenished keys go first",
        3,
        [("old", 0.0), ("b", 50.0), ("c", 50.0), ("d", 50.0)],
        "b",
        50.0,
        True,
        3,
    ),
    (
        "then the least recently admitted",
        3,
        [("a", 0.0), ("b", 1.0), ("c", 2.0), ("d", 3.0)],
        "a",
        3.0,
        False,
        3,
    ),
    (
        "re-admission refreshes a key",
        3,
        [("a", 0.0), ("b", 1.0), ("c", 2.0), ("a", 2.5), ("d", 3.0)],
        "a",
        3.0,
        True,
        3,
    ),
    (
        "known keys never evict",
        2,
        [("a", 0.0), ("b", 0.0), ("a", 1.0), ("b", 1.0)],
        "a",
        1.0,
        True,
        2,
    ),
]


@pytest.mark.parametrize(
    ("max_keys", "admitted", "probe", "now", "remembered", "size"),
    [case[1:] for case in EVICTIONS],
    ids=[case[0] for case in EVICTIONS],
)
def test_gcra_eviction(max_keys, admitted, probe, now, remembered, size):
    # 10 per 100 s: every admission adds 10 s to its key's TAT.
    gcra = Gcra(limit=10, period=100.0, max_keys=max_keys)
    for key, at in admitted:
        assert gcra.check(key, at).allowed
    assert gcra.tracked_keys() == size
    fresh_remaining = gcra.check(probe, now).remaining == 9
    assert fresh_remaining is not remembered


def test_gcra_eviction_is_amortized():
    gcra = Gcra(limit=10, period=1e6, max_keys=100)
    for n in range(100):
        gcra.check(f"k{n}", 0.0)
    gcra.check("new", 0.0)
    assert gcra.tracked_keys() == 91  # a tenth freed at once, then "new" added
    assert gcra.check("k0", 0.0).remaining == 9  # forgotten: oldest
    assert gcra.check("k99", 0.0).remaining == 8  # kept: most recent


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": -1, "period": 1.0},
        {"limit": 1, "period": 0.0},
        {"limit": 1, "period": 1.0, "max_keys": 0},
    ],
)
def test_gcra_rejects_bad_limits(kwargs):
    with pytest.raises(ValueError):
        Gcra(**kwargs)
