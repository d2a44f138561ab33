"""The registry's running count of room and its ranking of phones, against a full recount."""

import contextlib
import random

import trio

from actors.choice import plan_batch, plan_ranked
from actors.gateway import WINDOW_UNLIMITED, GatewayActor
from actors.registry import GatewayRegistry


async def _noop(text):
    pass


def _actor(registry, gateway_id, *, rate=0, priority=1, subscribe=True):
    actor = GatewayActor(gateway_id=gateway_id, device_id=f"p{gateway_id}", send_text=_noop, active=True,
                         priority=priority, bucket=registry.bucket_for(rate, trio.current_time()))
    registry.attach(actor)
    if subscribe:
        actor.identifier = f"ident-{gateway_id}"
    return actor


def _row(n, segments=1):
    return {"message_id": f"m{n}", "segments": segments, "phone_number": "+14155550100", "body": "x"}


@contextlib.contextmanager
def _reading(registry, now):
    """The ranking read in the event loop, as a dispatch round reads it on its thread."""
    snapshot, horizon = registry.ranking(now)
    tired = []
    try:
        yield registry.read_ranking(snapshot, horizon, now, tired)
    finally:
        registry.rest(tired, now)


def _ranked(registry, now):
    with _reading(registry, now) as ranked:
        return [view.gateway_id for view in ranked]


def _recount(registry, now):
    """What a round used to compute from a view of every phone."""
    views = [registry.get(i).view(now) for i in sorted(registry.ids())]
    views = [v for v in views if v.active and v.online and v.subscribed]
    free = sum(max(0, registry.get(v.gateway_id).window - v.in_flight) for v in views)
    ranked = [v.gateway_id for v in sorted((v for v in views if v.budget >= 1),
                                           key=lambda v: (v.priority, v.in_flight, v.gateway_id))]
    return free, ranked, views


async def test_room_and_ranking_follow_every_change_of_a_phone():
    rng = random.Random(11)
    registry = GatewayRegistry(default_rate_per_minute=0)
    actors: dict[int, GatewayActor] = {}
    message = 0
    for step in range(3_000):
        now = trio.current_time()
        gateway_id = rng.randrange(1, 30)
        actor = actors.get(gateway_id)
        move = rng.random()
        if actor is None or move < 0.04:  # connect (a second socket replaces the first)
            actors[gateway_id] = _actor(registry, gateway_id, rate=rng.choice([0, 0, 5]),
                                        priority=rng.choice([0, 1, 2]), subscribe=rng.random() < 0.9)
        elif move < 0.45:
            message += 1
            actor.hand(_row(message, segments=rng.choice([1, 1, 3])))
        elif move < 0.75 and actor.in_flight:
            registry.settled(gateway_id, rng.choice(list(actor.in_flight)))
        elif move < 0.80:
            actor.priority = rng.choice([0, 1, 2])  # as a test or an operator may set it
        elif move < 0.85:
            registry.settings_changed({"id": gateway_id, "active": rng.random() < 0.8,
                                       "priority": rng.choice([0, 1, 2]),
                                       "send_rate_per_minute": rng.choice([None, 0, 3])})
        elif move < 0.88:
            actor.identifier = None if actor.identifier else f"ident-{gateway_id}"
        elif move < 0.91:
            actor.close("replaced")
        elif move < 0.94:
            actor.drop_in_flight()
            registry.detach(actor)
            del actors[gateway_id]
        free, ranked, views = _recount(registry, now)
        assert registry.free == free, step
        assert _ranked(registry, now) == ranked, step
        assert _ranked(registry, now) == ranked, step  # reading it does not use it up
        batch = [(f"new{i}", rng.choice([1, 2]), frozenset({rng.randrange(1, 30)}) if rng.random() < 0.3
                  else frozenset()) for i in range(rng.randrange(0, 12))]
        with _reading(registry, now) as lazily:
            assert plan_ranked(batch, lazily) == plan_batch(batch, views), step


async def test_a_batch_over_many_idle_phones_reads_about_as_many_phones_as_messages():
    registry = GatewayRegistry(default_rate_per_minute=0)
    for gateway_id in range(1, 5_001):
        _actor(registry, gateway_id)
    assert registry.free == 5_000 * WINDOW_UNLIMITED
    read = 0

    def counted(views):
        nonlocal read
        for view in views:
            read += 1
            yield view

    batch = [(f"m{i}", 1, frozenset()) for i in range(20)]
    with _reading(registry, trio.current_time()) as ranked:
        chosen = plan_ranked(batch, counted(ranked))
    assert [a.gateway_id for a in chosen] == list(range(1, 21))  # least loaded, then lowest id
    assert read <= 21


async def test_a_phone_out_of_budget_rests_until_its_bucket_refills():
    registry = GatewayRegistry(default_rate_per_minute=0)
    limited = _actor(registry, 1, rate=2, priority=0)  # two segments a minute, preferred
    _actor(registry, 2)
    limited.hand(_row(1))
    limited.hand(_row(2))
    registry.settled(1, "m1")
    registry.settled(1, "m2")
    now = trio.current_time()
    assert _ranked(registry, now) == [2]  # the limited phone has room but no budget: resting
    assert _ranked(registry, now + 10) == [2]
    assert _ranked(registry, now + 31) == [1, 2]  # one segment back after 30 s


async def test_a_ranking_read_after_phones_changed_sees_them_as_they_are_now():
    registry = GatewayRegistry(default_rate_per_minute=0)
    for gateway_id in (1, 2, 3, 4):
        _actor(registry, gateway_id)
    registry.get(1).hand(_row(1))
    now = trio.current_time()
    snapshot, horizon = registry.ranking(now)  # taken before the claim
    registry.settled(1, "m1")                   # then, while the claim runs: changed once
    registry.get(2).hand(_row(2))               # changed twice
    registry.get(2).hand(_row(3))
    registry.get(3).close("replaced")           # no longer online
    registry.detach(registry.get(4))            # gone
    views = list(registry.read_ranking(snapshot, horizon, now, []))
    # at their places in the snapshot (2 had no load then, 1 had one), as they are now
    assert [(v.gateway_id, v.in_flight) for v in views] == [(2, 2), (1, 0)]
    assert _ranked(registry, now) == [1, 2]  # a fresh ranking has every phone with room
