"""Accepted messages handed straight to a phone by the transaction that accepts them.

While this node's phones have room, `sms/send` writes a message dispatched to a phone and hands
it over once committed (Dispatcher.plan_handoff); once a round finds the phones short, accepted
messages queue and are served in priority order.
"""

import time

import trio

from actors.gateway import GatewayActor
from actors.rates import TokenBucket
from actors.registry import GatewayRegistry
from tests.conftest import phone, wait_for


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def _noop(text):
    pass


def _actor(registry, bucket):
    """A subscribed phone with `bucket`, registered."""
    actor = GatewayActor(gateway_id=1, device_id="p1", send_text=_noop, active=True, priority=1, bucket=bucket)
    registry.attach(actor)
    actor.identifier = "ident-1"
    return actor


def _row(node, message_id):
    [row] = node.sql("SELECT status, gateway_id, lease, attempts, dispatched_at, created_at FROM messages"
                     " WHERE message_id = %s", (message_id,))
    return row


async def test_a_message_accepted_while_a_phone_has_room_is_dispatched_in_the_same_transaction(server):
    client = server.client_key("sms")
    async with phone(server, await server.register("dev-1")) as p:
        await wait_for(lambda: server.node.dispatcher.handing_off)
        rounds = server.node.dispatcher.dispatched_total
        sent = await server.send(client)
        assert sent["status"] == "queued"  # the contract's answer for an accepted message
        sms = await p.next_sms()
        assert sms["message_id"] == sent["message_id"]
        row = _row(server, sent["message_id"])
        # now() is the transaction's start: dispatched by the transaction that inserted it
        assert row["dispatched_at"] == row["created_at"] and row["attempts"] == 1
        assert row["lease"] == server.node.gateways.get(row["gateway_id"]).lease
        assert server.node.dispatcher.dispatched_total == rounds + 1
        assert server.node.gateways.get(row["gateway_id"]).reserved == 0


async def test_without_a_phone_the_message_queues_and_a_round_serves_it(server):
    client = server.client_key("sms")
    sent = await server.send(client)
    assert _row(server, sent["message_id"])["status"] == "queued"
    async with phone(server, await server.register("dev-1")) as p:
        assert (await p.next_sms())["message_id"] == sent["message_id"]
    row = _row(server, sent["message_id"])
    assert row["dispatched_at"] > row["created_at"]


async def test_once_the_phones_are_short_accepted_messages_queue_and_priority_wins(database_url):
    from tests.conftest import clean, running_node
    clean(database_url)
    # A rate-limited phone holds a window of 10.
    async with running_node(database_url, GATEWAY_SEND_RATE_PER_MINUTE="600") as node:
        key = node.client_key("sms")
        async with phone(node, await node.register("dev-1")) as p:
            await wait_for(lambda: node.node.dispatcher.handing_off)
            entries = [{"to": "+14155552671", "message": f"promo {i}"} for i in range(30)]
            r = await node.http.post("/api/v1/sms/send_bulk", headers=bearer(key), json={"messages": entries})
            assert r.status_code == 202
            await wait_for(lambda: not node.node.dispatcher.handing_off)  # the round left promos queued
            urgent = await node.send(key, message="Your code is 123456", priority="high")
            assert _row(node, urgent["message_id"])["status"] == "queued"
            seen = []
            with trio.fail_after(10):
                while urgent["message_id"] not in seen:
                    sms = await p.next_sms()
                    seen.append(sms["message_id"])
                    await p.report(sms["message_id"], "delivered")
            # at most the window of promos went before it; it overtook the queued ones
            assert len(seen) <= 11, len(seen)
            queued = node.sql("SELECT count(*) AS n FROM messages WHERE status = 'queued'")[0]["n"]
            assert queued > 0


async def test_a_failed_accepting_transaction_gives_back_the_room_it_held(server):
    client = server.client_key("sms")
    async with phone(server, await server.register("dev-1")) as p:
        await wait_for(lambda: server.node.dispatcher.handing_off)
        actor = server.node.gateways.get(1)
        free = server.node.gateways.free
        server.node.store.pool.close()
        r = await server.http.post("/api/v1/sms/send", headers=bearer(client),
                                   json={"to": "+14155552671", "message": "hi"})
        assert r.status_code == 503
        assert actor.reserved == 0 and actor.reserved_segments == 0 and not actor.in_flight
        assert server.node.gateways.free == free
        with trio.move_on_after(0.3):
            await p.next_sms()
            raise AssertionError("a message that was not committed reached the phone")


async def test_a_phone_gone_before_the_commit_gets_nothing_and_its_message_goes_to_another(server):
    client = server.client_key("sms")
    k1, k2 = await server.register("dev-1"), await server.register("dev-2")
    async with phone(server, k2) as survivor:
        async with phone(server, k1):
            server.node.gateways.get(1).priority = 0  # the handoff picks dev-1
            await wait_for(lambda: server.node.dispatcher.handing_off)
            sends = server.node.sends
            write = sends.write_batch

            def closing_first(conn, items, handoff):
                # The phone goes, and its connection's cleanup (requeue what it held, mark it
                # offline) is over before this transaction writes the message dispatched to it.
                [(actor, _, _)] = handoff.reserved
                trio.from_thread.run_sync(actor.close, "test")
                for _ in range(250):
                    if conn.execute("SELECT status FROM gateways WHERE id = 1").fetchone()["status"] == "offline":
                        break
                    time.sleep(0.02)
                return write(conn, items, handoff)

            sends.write_batch = closing_first
            try:
                sent = await server.send(client)
            finally:
                sends.write_batch = write
            sms = await survivor.next_sms(timeout=5)
            assert sms["message_id"] == sent["message_id"]
            row = _row(server, sent["message_id"])
            assert row["gateway_id"] == 2 and row["dispatched_at"] > row["created_at"]  # a round's


async def test_hand_never_spends_more_than_the_send_budget():
    registry = GatewayRegistry(default_rate_per_minute=0)
    actor = _actor(registry, TokenBucket.full(60, trio.current_time(), capacity=1))
    row = {"message_id": "msg_a", "segments": 1, "phone_number": "+14155552671", "body": "x", "priority": 1}
    assert actor.hand(row)
    assert not actor.hand({**row, "message_id": "msg_b"})
    assert list(actor.in_flight) == ["msg_a"]


async def test_what_a_handoff_holds_counts_against_the_window_and_budget():
    registry = GatewayRegistry(default_rate_per_minute=0)
    actor = _actor(registry, registry.bucket_for(600, trio.current_time()))
    free = registry.free
    actor.reserve(3, 4)
    view = actor.view(trio.current_time())
    assert registry.free == free - 3 and view.in_flight == 3 and view.budget == actor.bucket.capacity - 4
    actor.release(3, 4)
    assert registry.free == free and actor.view(trio.current_time()).budget == actor.bucket.capacity


async def test_while_older_messages_wait_for_room_nothing_is_handed_over(database_url):
    """Room freed while messages wait belongs to them: a hand-off would let a newcomer take it
    before the round woken for them (under load, older messages would starve)."""
    from actors.dispatcher import Dispatcher
    from store.messages import NewMessage, insert_outbound
    from store.pool import open_store
    from tests.conftest import clean, sql

    clean(database_url)
    sql(database_url, "INSERT INTO gateways (id, device_id, name) VALUES (1, 'p1', 'p1')")
    async with open_store(database_url) as store:
        registry = GatewayRegistry(default_rate_per_minute=0)
        actor = _actor(registry, TokenBucket.full(0, trio.current_time()))  # unlimited: a window of 200
        dispatcher = Dispatcher(store=store, registry=registry)
        assert not dispatcher.handing_off  # until a round has looked
        await dispatcher.dispatch_round()  # an empty queue
        assert dispatcher.handing_off
        assert dispatcher.plan_handoff([("new", 1, 1)]).chosen == {"new": (1, actor.lease)}
        actor.release(1, 1)  # (that plan's hold, never written)

        messages = [NewMessage(phone_number="+14155552671", body=f"m{i}", segments=1, encoding="GSM-7",
                               api_key_id=None, ttl_seconds=3600) for i in range(actor.window + 5)]
        await store.run(insert_outbound, messages)
        dispatcher.wake_local()  # as the accepting node does for what it queued
        await dispatcher.dispatch_round()  # fills the window; five wait
        assert len(actor.in_flight) == actor.window and not dispatcher.handing_off
        actor.settled(next(iter(actor.in_flight)))  # room for one
        assert registry.free == 1
        assert dispatcher.plan_handoff([("new", 1, 1)]).chosen == {}
        await dispatcher.dispatch_round()  # the round takes it for the oldest waiting
        assert len(actor.in_flight) == actor.window
        while actor.in_flight:
            actor.settled(*actor.in_flight)
            await dispatcher.dispatch_round()
        assert dispatcher.handing_off  # every waiting message placed: hand-offs again


async def test_an_otp_code_goes_straight_to_a_phone_with_room(server):
    key = server.client_key("otp")
    async with phone(server, await server.register("dev-1")) as p:
        await wait_for(lambda: server.node.dispatcher.handing_off)
        r = await server.http.post("/api/v1/otp/send", json={"phone_number": "+14155552671"}, headers=bearer(key))
        assert r.status_code == 200, r.text
        sms = await p.next_sms()
        assert sms["message_id"] == r.json()["message_id"] and sms["priority"] == "high"
        row = _row(server, sms["message_id"])
        assert row["dispatched_at"] == row["created_at"] and server.node.gateways.get(1).reserved == 0
        # a refused send (the phone's hourly limit) holds nothing
        server.node.otp.per_phone_per_hour = 1
        r = await server.http.post("/api/v1/otp/send", json={"phone_number": "+14155552671"}, headers=bearer(key))
        assert r.status_code == 429
        assert server.node.gateways.get(1).reserved == 0
