"""The registry's keepalive: one ticker pings every phone and closes the silent ones."""

import json

import trio

from actors.gateway import HEARTBEAT_TIMEOUT, PING_INTERVAL, SEND_DEADLINE, GatewayActor
from actors.registry import GatewayRegistry
from actors.rates import TokenBucket


def phone(registry, gateway_id, sent):
    async def send_text(text):
        sent.append((gateway_id, json.loads(text)))

    actor = GatewayActor(gateway_id=gateway_id, device_id=f"p{gateway_id}", send_text=send_text, active=True,
                         priority=1, bucket=TokenBucket.full(0, trio.current_time()))
    registry.attach(actor)
    return actor


async def test_every_phone_is_pinged_every_interval_and_silent_ones_are_closed(autojump_clock):
    registry = GatewayRegistry(default_rate_per_minute=0)
    sent = []
    chatty, silent = phone(registry, 1, sent), phone(registry, 2, sent)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.run)
        nursery.start_soon(chatty.run)
        nursery.start_soon(silent.run)
        await trio.sleep(PING_INTERVAL * 3 + 0.5)
        pings = [gid for gid, frame in sent if frame["type"] == "ping"]
        assert pings.count(1) == 3 and pings.count(2) == 3
        for _ in range(int(HEARTBEAT_TIMEOUT // PING_INTERVAL) + 2):
            chatty.noticed()  # the chatty phone keeps sending frames; the silent one never does
            await trio.sleep(PING_INTERVAL)
        assert silent.close_reason == "heartbeat_timeout"
        assert chatty.close_reason is None
        nursery.cancel_scope.cancel()


async def test_a_socket_that_takes_no_write_is_closed_as_stalled(autojump_clock):
    registry = GatewayRegistry(default_rate_per_minute=0)
    sent = []
    healthy = phone(registry, 1, sent)

    async def never_returns(text):
        await trio.sleep_forever()

    stuck = GatewayActor(gateway_id=2, device_id="p2", send_text=never_returns, active=True, priority=1,
                         bucket=TokenBucket.full(0, trio.current_time()))
    registry.attach(stuck)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.run)
        nursery.start_soon(healthy.run)
        nursery.start_soon(stuck.run)
        await trio.sleep(SEND_DEADLINE)
        assert stuck.close_reason is None  # a slow write is not yet a dead socket
        healthy.noticed()
        await trio.sleep(2 * PING_INTERVAL + 0.5)  # past the tick that finds it (not at the same instant)
        assert stuck.close_reason == "stalled"
        assert healthy.close_reason is None
        nursery.cancel_scope.cancel()
