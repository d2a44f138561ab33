"""Socket heartbeats: many phones' stored in one statement, the newest of each, and flushed
before a phone is marked offline."""

import psycopg
import trio
from psycopg.rows import dict_row

from actors.heartbeats import HeartbeatWriter
from store import gateways as gateways_store
from store.pool import open_store
from tests.conftest import clean, phone, sql, wait_for


def gateways(url: str, count: int) -> list[int]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        ids = [gateways_store.register(conn, f"hb-{i}", "Phone", None)[0]["id"] for i in range(count)]
        conn.execute("UPDATE gateways SET status = 'offline', battery_level = 40, signal_strength = 3")
        conn.commit()
    return ids


async def test_many_heartbeats_are_one_write_keeping_the_newest_of_each(database_url):
    clean(database_url)
    ids = gateways(database_url, 50)
    async with open_store(database_url) as store:
        writer = HeartbeatWriter(store=store, interval=0.2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            for gid in ids:
                writer.record(gid, 90, None, 0)
            writer.record(ids[0], None, 1, 5)  # newer, but says nothing of the battery
            await wait_for(lambda: writer.writes == 1)
            assert writer.written == 50
            await trio.sleep(0.5)
            assert writer.writes == 1  # nothing new, nothing written
            nursery.cancel_scope.cancel()
    rows = {r["id"]: r for r in sql(database_url, "SELECT id, status, battery_level, signal_strength,"
                                                  " messages_in_queue, last_heartbeat_at FROM gateways")}
    assert all(r["status"] == "online" and r["last_heartbeat_at"] is not None for r in rows.values())
    assert (rows[ids[0]]["battery_level"], rows[ids[0]]["signal_strength"], rows[ids[0]]["messages_in_queue"]) \
        == (90, 1, 5)
    assert all((rows[g]["battery_level"], rows[g]["signal_strength"]) == (90, 3) for g in ids[1:])


async def test_flush_writes_a_leaving_phone_at_once(database_url):
    clean(database_url)
    [gid] = gateways(database_url, 1)
    async with open_store(database_url) as store:
        writer = HeartbeatWriter(store=store, interval=60.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            writer.record(gid, 12, 2, 0)
            with trio.fail_after(10):  # not the 60 s interval
                await writer.flush(gid)
            assert sql(database_url, "SELECT battery_level FROM gateways")[0]["battery_level"] == 12
            await writer.flush(gid)  # nothing pending: returns at once
            nursery.cancel_scope.cancel()


async def test_an_unavailable_database_drops_the_batch_and_the_writer_goes_on(database_url):
    clean(database_url)
    [gid] = gateways(database_url, 1)
    async with open_store(database_url) as store:
        store.pool.close()
        writer = HeartbeatWriter(store=store, interval=0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            writer.record(gid, 12, 2, 0)
            with trio.fail_after(20):
                await writer.flush(gid)  # the failed write still ends the wait
            writer.record(gid, 13, 2, 0)
            with trio.fail_after(20):
                await writer.flush(gid)
            assert writer.writes == 0
            nursery.cancel_scope.cancel()
    assert sql(database_url, "SELECT battery_level FROM gateways")[0]["battery_level"] == 40


async def test_a_heartbeat_just_before_the_socket_closes_leaves_the_phone_offline(server):
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        await p.perform("heartbeat", battery_level=33, signal_strength=2, messages_in_queue=0)
    await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE status = 'offline' AND battery_level = 33"))
    await trio.sleep(1.5)  # past the writer's interval: nothing marks it online again
    assert server.sql("SELECT status FROM gateways")[0]["status"] == "offline"


async def test_a_writer_that_cannot_write_does_not_keep_a_leaving_phones_messages(server, monkeypatch):
    async def stuck(self, gateway_id):
        await trio.sleep_forever()

    monkeypatch.setattr(HeartbeatWriter, "flush", stuck)
    client = server.client_key("sms")
    key = await server.register("dev-1")
    async with phone(server, key) as p:
        sent = await server.send(client)
        assert (await p.next_sms())["message_id"] == sent["message_id"]
    # the socket is gone: what it held goes back to the queue all the same
    await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE status = 'queued'"), timeout=10)
