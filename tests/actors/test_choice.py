"""Gateway choice for single messages and for batches."""

import math

import pytest

from actors.choice import Assignment, GatewayView, choose_gateway, plan_batch


def gw(gateway_id, priority=0, load=0, budget=math.inf, **flags):
    """A healthy gateway unless flags say otherwise; load is queue depth."""
    return GatewayView(
        gateway_id=gateway_id,
        priority=priority,
        active=flags.get("active", True),
        online=flags.get("online", True),
        subscribed=flags.get("subscribed", True),
        in_flight=flags.get("in_flight", 0),
        queue_depth=load,
        budget=budget,
    )


NONE = frozenset()

CHOICES = [
    # (id, candidates, segments, avoid, expected gateway id)
    ("no candidates", [], 1, NONE, None),
    ("single healthy", [gw(1)], 1, NONE, 1),
    ("inactive filtered", [gw(1, active=False), gw(2, load=9)], 1, NONE, 2),
    ("offline filtered", [gw(1, online=False), gw(2, load=9)], 1, NONE, 2),
    ("unsubscribed filtered", [gw(1, subscribed=False), gw(2, load=9)], 1, NONE, 2),
    (
        "none eligible",
        [gw(1, active=False), gw(2, online=False), gw(3, subscribed=False)],
        1,
        NONE,
        None,
    ),
    ("priority wins over load", [gw(1, priority=2), gw(2, 1, load=50)], 1, NONE, 2),
    ("load breaks priority ties", [gw(1, load=3), gw(2, load=1)], 1, NONE, 2),
    (
        "in-flight counts as load",
        [gw(1, load=1, in_flight=3), gw(2, load=3)],
        1,
        NONE,
        2,
    ),
    ("id breaks load ties", [gw(3), gw(1), gw(2)], 1, NONE, 1),
    ("budget too small", [gw(1, budget=2.0), gw(2, load=5)], 3, NONE, 2),
    ("budget exactly enough", [gw(1, budget=3.0), gw(2, load=5)], 3, NONE, 1),
    ("no budget anywhere", [gw(1, budget=2.0), gw(2, budget=0.0)], 3, NONE, None),
    ("fractional budget", [gw(1, budget=0.99)], 1, NONE, None),
    ("unlimited budget", [gw(1, budget=math.inf)], 10, NONE, 1),
    ("avoid prefers another", [gw(1), gw(2, load=9)], 1, frozenset({1}), 2),
    (
        "avoid prefers even a worse priority",
        [gw(1, priority=0), gw(2, priority=5)],
        1,
        frozenset({1}),
        2,
    ),
    ("avoid is soft", [gw(1), gw(2, online=False)], 1, frozenset({1}), 1),
    (
        "among avoided, normal order",
        [gw(1, load=2), gw(2, load=1)],
        1,
        frozenset({1, 2}),
        2,
    ),
    (
        "avoid does not resurrect ineligible",
        [gw(1, active=False), gw(2)],
        1,
        frozenset({2}),
        2,
    ),
    ("avoid unknown id", [gw(1)], 1, frozenset({7}), 1),
]


@pytest.mark.parametrize(
    ("candidates", "segments", "avoid", "expected"),
    [case[1:] for case in CHOICES],
    ids=[case[0] for case in CHOICES],
)
def test_choose_gateway(candidates, segments, avoid, expected):
    assert choose_gateway(candidates, segments, avoid=avoid) == expected


def messages(count, segments=1, avoid=NONE):
    return [(f"m{n}", segments, avoid) for n in range(count)]


def plan(*gateway_ids):
    return [Assignment(f"m{n}", g) for n, g in enumerate(gateway_ids)]


BATCHES = [
    # (id, messages, candidates, expected assignments)
    ("empty batch", [], [gw(1)], []),
    ("empty candidates", messages(3), [], []),
    (
        "spreads over 3 equal",
        messages(6),
        [gw(1), gw(2), gw(3)],
        plan(1, 2, 3, 1, 2, 3),
    ),
    (
        "fills the least loaded first",
        messages(4),
        [gw(1, load=2), gw(2), gw(3, load=1)],
        plan(2, 2, 3, 1),
    ),
    (
        "priority absorbs everything it can",
        messages(3),
        [gw(1, priority=1), gw(2, priority=0)],
        plan(2, 2, 2),
    ),
    (
        "budget overflows to the next priority",
        messages(4, segments=2),
        [gw(1, priority=0, budget=5.0), gw(2, priority=1, budget=4.0)],
        plan(1, 1, 2, 2),
    ),
    (
        "budgets never overrun, leftovers dropped",
        messages(5, segments=3),
        [gw(1, budget=6.0), gw(2, budget=3.0)],
        plan(1, 2, 1),
    ),
    (
        "small message still fits a nearly spent budget",
        [("big", 4, NONE), ("small", 1, NONE)],
        [gw(1, budget=5.0)],
        [Assignment("big", 1), Assignment("small", 1)],
    ),
    (
        "skipped message does not block later ones",
        [("huge", 9, NONE), ("tiny", 1, NONE)],
        [gw(1, budget=5.0)],
        [Assignment("tiny", 1)],
    ),
    (
        "avoid per message",
        [("a", 1, frozenset({1})), ("b", 1, frozenset({1})), ("c", 1, NONE)],
        [gw(1), gw(2)],
        [Assignment("a", 2), Assignment("b", 2), Assignment("c", 1)],
    ),
    (
        "unusable gateways get nothing",
        messages(3),
        [gw(1, online=False), gw(2), gw(3, active=False)],
        plan(2, 2, 2),
    ),
]


@pytest.mark.parametrize(
    ("batch", "candidates", "expected"),
    [case[1:] for case in BATCHES],
    ids=[case[0] for case in BATCHES],
)
def test_plan_batch(batch, candidates, expected):
    assert plan_batch(batch, candidates) == expected


def test_plan_batch_leaves_candidates_untouched():
    candidates = [gw(1, budget=5.0)]
    plan_batch(messages(2), candidates)
    assert candidates == [gw(1, budget=5.0)]


def test_even_spread_over_a_large_batch():
    assignments = plan_batch(messages(300), [gw(1), gw(2), gw(3)])
    counts = {g: 0 for g in (1, 2, 3)}
    for assignment in assignments:
        counts[assignment.gateway_id] += 1
    assert counts == {1: 100, 2: 100, 3: 100}


def _plan_by_repeated_choice(messages, candidates):
    """The reference: choose_gateway for each message in turn, updating the chosen view."""
    import attrs as _attrs

    views = list(candidates)
    out = []
    for message_id, segments, avoid in messages:
        gateway_id = choose_gateway(views, segments, avoid=avoid)
        if gateway_id is None:
            continue
        i = next(k for k, v in enumerate(views) if v.gateway_id == gateway_id)
        views[i] = _attrs.evolve(views[i], queue_depth=views[i].queue_depth + 1,
                                 budget=views[i].budget - segments)
        out.append(Assignment(message_id, gateway_id))
    return out


def test_plan_batch_matches_repeated_choice_on_random_fleets():
    import math
    import random

    rng = random.Random(7)
    for _ in range(300):
        candidates = [GatewayView(gateway_id=g, priority=rng.choice([0, 1, 1, 2]), active=rng.random() > 0.1,
                                  online=rng.random() > 0.1, subscribed=rng.random() > 0.1,
                                  in_flight=rng.randrange(5), queue_depth=rng.randrange(3),
                                  budget=rng.choice([math.inf, 0, 0.5, 1, 3, 10, 30]))
                      for g in range(rng.randrange(0, 12))]
        messages = [(f"m{i}", rng.choice([1, 1, 1, 2, 4]),
                     frozenset({rng.randrange(12)}) if rng.random() < 0.3 else frozenset())
                    for i in range(rng.randrange(0, 40))]
        assert plan_batch(messages, candidates) == _plan_by_repeated_choice(messages, candidates)
