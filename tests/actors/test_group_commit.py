"""Group commit: every waiter answered once, after its transaction; all fail together."""

import trio

from actors.group_commit import GroupCommitter
from store.messages import NewMessage
from store.pool import StoreUnavailable, open_store
from store.sends import SendItem, write_sends
from tests.conftest import clean, sql

import pytest


def item(key_id=None, idem=None, body="hi", request_hash="h"):
    msg = NewMessage(phone_number="+14155552671", body=body, segments=1, encoding="GSM-7",
                     api_key_id=key_id, ttl_seconds=3600)
    return SendItem(key_id=key_id or 0, messages=(msg,), idem=idem, request_hash=request_hash,
                    answer=lambda rows: ({"message_id": rows[0]["message_id"]}, 202))


async def test_every_waiter_is_answered_exactly_once_with_its_own_row(database_url):
    clean(database_url)
    async with open_store(database_url) as store:
        committer = GroupCommitter(store=store, write_batch=write_sends)
        answers = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.run)

            async def one(i):
                answers.append(await committer.submit(item(body=f"m{i}")))

            async with trio.open_nursery() as senders:
                for i in range(300):
                    senders.start_soon(one, i)
            nursery.cancel_scope.cancel()
    ids = [a[0]["message_id"] for a in answers]
    assert len(ids) == 300 and len(set(ids)) == 300
    stored = {r["message_id"]: r["body"] for r in sql(database_url, "SELECT message_id, body FROM messages")}
    assert set(ids) == set(stored) and len(stored) == 300
    assert committer.items == 300 and committer.batches < 300  # requests shared commits


async def test_a_bad_item_fails_alone(database_url):
    clean(database_url)
    key_id = sql(database_url, "INSERT INTO api_keys (kind, digest, prefix, name) VALUES"
                               " ('client', 'd', 'p', 'n') RETURNING id")[0]["id"]
    async with open_store(database_url) as store:
        committer = GroupCommitter(store=store, write_batch=write_sends, writers=1)
        results = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.run)
            await committer.submit(item(key_id, idem="k1", request_hash="A"))

            async def one(name, it):
                try:
                    results[name] = await committer.submit(it)
                except Exception as exc:
                    results[name] = exc

            async with trio.open_nursery() as senders:
                senders.start_soon(one, "conflict", item(key_id, idem="k1", request_hash="B"))
                senders.start_soon(one, "repeat", item(key_id, idem="k1", request_hash="A"))
                senders.start_soon(one, "fresh", item(key_id, body="new"))
            nursery.cancel_scope.cancel()
    assert type(results["conflict"]).__name__ == "IdempotencyConflict"
    assert results["repeat"][1] == 202
    assert results["fresh"][1] == 202
    assert sql(database_url, "SELECT count(*) AS n FROM messages")[0]["n"] == 2


async def test_database_down_fails_every_waiter_and_stores_nothing(database_url):
    clean(database_url)
    async with open_store(database_url) as store:
        store.pool.close()
        committer = GroupCommitter(store=store, write_batch=write_sends)
        errors = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.run)

            async def one():
                with pytest.raises(StoreUnavailable):
                    await committer.submit(item())
                errors.append(1)

            async with trio.open_nursery() as senders:
                for _ in range(20):
                    senders.start_soon(one)
            nursery.cancel_scope.cancel()
    assert len(errors) == 20
    assert sql(database_url, "SELECT count(*) AS n FROM messages")[0]["n"] == 0


async def test_send_answers_503_when_the_database_is_down(server):
    key = server.client_key("sms")
    server.node.store.pool.close()
    r = await server.http.post("/api/v1/sms/send", headers={"Authorization": f"Bearer {key}"},
                               json={"to": "+14155552671", "message": "hi"})
    assert r.status_code == 503 and "error" in r.json()


async def test_submit_many_answers_each_item_in_order_beside_single_submits(database_url):
    clean(database_url)
    async with open_store(database_url) as store:
        committer = GroupCommitter(store=store, write_batch=write_sends, max_batch=7)
        groups: dict[int, list] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.run)

            async def group(g):
                groups[g] = await committer.submit_many([item(body=f"g{g}-{i}") for i in range(g)])

            async with trio.open_nursery() as senders:
                for g in range(1, 12):
                    senders.start_soon(group, g)
                senders.start_soon(committer.submit, item(body="single"))
            assert await committer.submit_many([]) == []
            nursery.cancel_scope.cancel()
    stored = {r["message_id"]: r["body"] for r in sql(database_url, "SELECT message_id, body FROM messages")}
    assert len(stored) == sum(range(1, 12)) + 1
    for g, results in groups.items():
        assert [stored[body["message_id"]] for body, _ in results] == [f"g{g}-{i}" for i in range(g)]


async def test_a_waiter_past_its_deadline_gets_too_slow_and_a_full_mailbox_makes_callers_wait(database_url):
    clean(database_url)

    def slow(conn, items):
        conn.execute("SELECT pg_sleep(1.5)")
        return write_sends(conn, items)

    async with open_store(database_url) as store:
        committer = GroupCommitter(store=store, write_batch=slow, writers=1, mailbox_size=1, watch_interval=0.05)
        outcomes = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.run)
            await trio.sleep(0)

            async def one(name, delay):
                await trio.sleep(delay)
                began = trio.current_time()
                try:
                    await committer.submit(item(body=name), timeout=0.3)
                    outcomes[name] = "committed"
                except trio.TooSlowError:
                    outcomes[name] = round(trio.current_time() - began, 1)

            async with trio.open_nursery() as senders:
                senders.start_soon(one, "written", 0)     # the writer takes it, then sleeps 1.5 s
                senders.start_soon(one, "in mailbox", 0.1)
                senders.start_soon(one, "mailbox full", 0.2)
            await trio.sleep(3.2)  # both batches that were taken are written meanwhile
            nursery.cancel_scope.cancel()
    # each let go at its deadline (within a watch interval), whether written or waiting
    assert outcomes == {"written": 0.3, "in mailbox": 0.3, "mailbox full": 0.3}, outcomes
    assert not committer._waiting
    # what was taken was still committed (an answer lost, as with any write whose answer was
    # lost); what never got into the mailbox was not
    assert sql(database_url, "SELECT count(*) AS n FROM messages")[0]["n"] == 2
