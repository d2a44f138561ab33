"""Supervision: restarts with backoff, NodeDown past the window, outages and stops."""

import pytest
import trio

from store.pool import StoreUnavailable
from supervisor import NodeDown, supervise


async def test_crashing_actor_is_restarted_then_brings_the_node_down(autojump_clock):
    runs = []
    restarts = []

    async def crashes():
        runs.append(trio.current_time())
        raise RuntimeError("boom")

    with pytest.raises(NodeDown):
        await supervise("flaky", crashes, max_restarts=3, window=60.0, on_restart=restarts.append)
    assert len(runs) == 4 and restarts == ["flaky"] * 3
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert gaps[0] < gaps[1] < gaps[2]  # exponential backoff


async def test_database_outage_is_retried_without_taking_the_node_down(autojump_clock):
    runs = []

    async def needs_database():
        runs.append(1)
        if len(runs) < 20:
            raise StoreUnavailable("down")
        await trio.sleep_forever()

    with trio.move_on_after(600):
        await supervise("dbuser", needs_database, max_restarts=3, window=60.0)
    assert len(runs) == 20


async def test_stop_during_a_failure_is_a_clean_stop(autojump_clock):
    async def failing_while_stopping():
        async with trio.open_nursery() as nursery:
            async def fail_on_cancel():
                try:
                    await trio.sleep_forever()
                finally:
                    raise StoreUnavailable("pool closed")
            nursery.start_soon(fail_on_cancel)
            await trio.sleep_forever()

    with trio.move_on_after(1) as scope:
        await supervise("webhooks", failing_while_stopping)
    assert scope.cancelled_caught
