"""The dispatcher end to end: spreading, priority, failover, retries, pacing, idempotent reports."""

import trio

from tests.conftest import clean, phone, running_node, wait_for


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def test_messages_spread_across_equal_phones(server):
    client = server.client_key("sms")
    keys = [await server.register(f"dev-{i}") for i in range(3)]
    async with phone(server, keys[0]) as p0, phone(server, keys[1]) as p1, phone(server, keys[2]) as p2:
        for _ in range(6):
            await server.send(client)
        counts = []
        for p in (p0, p1, p2):
            got = 0
            with trio.move_on_after(1.5):
                while True:
                    await p.next_sms()
                    got += 1
            counts.append(got)
    assert sum(counts) == 6 and all(c >= 1 for c in counts), counts


async def test_lower_priority_number_is_chosen_first(server):
    admin, client = server.client_key("admin"), server.client_key("sms")
    k1, k2 = await server.register("backup"), await server.register("primary")
    await server.http.patch("/api/v1/admin/gateways/1", headers=bearer(admin), json={"priority": 5})
    async with phone(server, k1) as backup, phone(server, k2) as primary:
        sent = await server.send(client)
        assert (await primary.next_sms())["message_id"] == sent["message_id"]
        with trio.move_on_after(0.5):
            await backup.next_sms()
            raise AssertionError("the backup phone got a message while the primary had room")


async def test_inflight_message_fails_over_when_socket_drops(server):
    client = server.client_key("sms")
    k1, k2 = await server.register("dev-1"), await server.register("dev-2")
    async with phone(server, k2) as survivor:
        async with phone(server, k1) as doomed:
            server.sql("UPDATE gateways SET priority = 0 WHERE device_id = 'dev-1'")
            server.node.gateways.get(1).priority = 0  # prefer the doomed phone for the first try
            sent = await server.send(client)
            sms = await doomed.next_sms()
            assert sms["message_id"] == sent["message_id"]
        # socket closed before any report: the message goes to the other phone
        again = await survivor.next_sms(timeout=5)
        assert again["message_id"] == sent["message_id"]
        await survivor.report(again["message_id"], "sent")
        await survivor.report(again["message_id"], "delivered")
        await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE status = 'delivered' AND gateway_id = 2"))


async def test_failed_report_is_retried_on_another_gateway_then_fails_for_good(database_url):
    clean(database_url)
    async with running_node(database_url, SMS_RETRY_DELAYS="0,0", SMS_MAX_ATTEMPTS="3") as node:
        client = node.client_key("sms")
        k1, k2 = await node.register("dev-1"), await node.register("dev-2")
        async with phone(node, k1) as p1, phone(node, k2) as p2:
            sent = await node.send(client)
            holders = []
            for attempt in range(3):
                sms = None
                with trio.fail_after(5):
                    while sms is None:
                        for p in (p1, p2):
                            with trio.move_on_after(0.2):
                                sms = await p.next_sms()
                                holder = p
                                break
                holders.append(holder)
                await holder.report(sms["message_id"], "failed", error_message=f"radio off {attempt}")
            assert holders[0] is not holders[1]  # the retry went to the other phone
            await wait_for(lambda: node.sql("SELECT 1 FROM messages WHERE status = 'failed'"))
        status = await node.status(client, sent["message_id"])
        assert status["status"] == "failed" and status["error_message"] == "radio off 2"
        assert status["failed_at"].endswith("Z")
        assert node.sql("SELECT value FROM daily_counters WHERE name = 'sms_failed'")[0]["value"] == 1


async def test_reports_are_idempotent_and_never_move_back(server):
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        sent = await server.send(client)
        sms = await p.next_sms()
        for status in ("sent", "delivered", "sent", "delivered", "failed"):
            r = await server.http.post("/api/v1/gateway/sms/status", headers=bearer(key),
                                       json={"message_id": sms["message_id"], "status": status})
            assert r.status_code == 200
    status = await server.status(client, sent["message_id"])
    assert status["status"] == "delivered" and status["failed_at"] is None
    assert server.sql("SELECT total_messages_sent FROM gateways")[0]["total_messages_sent"] == 1


async def test_send_rate_paces_a_phone(database_url):
    clean(database_url)
    async with running_node(database_url, GATEWAY_SEND_RATE_PER_MINUTE="2") as node:
        client = node.client_key("sms")
        key = await node.register("dev-1")
        async with phone(node, key) as p:
            for _ in range(3):
                await node.send(client)
            first = await p.next_sms()
            second = await p.next_sms()
            await p.report(first["message_id"], "delivered")
            await p.report(second["message_id"], "delivered")
            with trio.move_on_after(1.0):
                await p.next_sms()
                raise AssertionError("a third message overran a 2-a-minute phone")
        assert node.sql("SELECT count(*) AS n FROM messages WHERE status = 'queued'")[0]["n"] == 1


async def test_inactive_or_unsubscribed_phones_get_nothing(server):
    admin, client = server.client_key("admin"), server.client_key("sms")
    k1 = await server.register("dev-1")
    async with phone(server, k1, subscribe=False) as unsubscribed:
        sent = await server.send(client)
        with trio.move_on_after(0.5):
            frame = await unsubscribed.next()
            raise AssertionError(f"an unsubscribed socket got {frame}")
    await server.http.post("/api/v1/admin/gateways/1/toggle", headers=bearer(admin))
    async with phone(server, k1) as inactive:
        with trio.move_on_after(0.5):
            await inactive.next_sms()
            raise AssertionError("an inactive phone got a message")
    assert (await server.status(client, sent["message_id"]))["status"] == "queued"


async def test_queued_message_past_its_ttl_expires(server):
    from store import messages as messages_store
    client = server.client_key("sms")
    sent = await server.send(client, ttl_seconds=60)
    server.sql("UPDATE messages SET expires_at = now() - interval '1 second'")
    assert await server.node.store.run(messages_store.expire_queued) == 1
    status = await server.status(client, sent["message_id"])
    assert status["status"] == "failed" and status["error_message"] == "expired"


async def test_rounds_whose_bookkeeping_is_slow_leave_the_loop_half_free(database_url):
    """Should a round spend long planning in the event loop, the dispatcher waits as long
    before the next one under a steady stream of wake-ups."""
    import time

    import attrs

    from actors.dispatcher import Dispatcher
    from actors.registry import GatewayRegistry
    from store.pool import open_store

    @attrs.define(eq=False)
    class SlowDispatcher(Dispatcher):
        rounds: int = 0

        async def dispatch_round(self):
            self.rounds += 1
            until = time.perf_counter() + 0.02  # a plan that takes 20 ms of the loop
            while time.perf_counter() < until:
                pass
            self.bookkeeping = 0.02
            return 0

    async with open_store(database_url) as store:
        dispatcher = SlowDispatcher(store=store, registry=GatewayRegistry(default_rate_per_minute=0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dispatcher.run)

            async def arrivals():
                while True:
                    dispatcher.wake_local()  # messages queued all the time
                    await trio.sleep(0.001)

            nursery.start_soon(arrivals)
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    assert 5 <= dispatcher.rounds <= 30  # unpaced, 20 ms rounds back to back would be about 50
