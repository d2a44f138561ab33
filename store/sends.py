"""Accepting outbound messages: the write behind `sms/send` and `sms/send_bulk`.

Many requests are written in one transaction by the group committer (actors/group_commit.py).
Each request's rows, and its `Idempotency-Key` answer when it has one, are written together,
so a 202 always means committed and a repeat always gets the first answer.
"""

from __future__ import annotations

from typing import Callable, Sequence

import attrs
import psycopg

from store import idempotency
from store.messages import NewMessage, insert_outbound

__all__ = ["SendItem", "write_sends"]


@attrs.frozen
class SendItem:
    key_id: int
    messages: tuple[NewMessage, ...]
    answer: Callable[[list[dict]], tuple[dict, int]]  # pure: inserted rows -> (body, status)
    idem: str | None = None
    request_hash: str = ""


def write_sends(conn: psycopg.Connection, items: Sequence[SendItem]) -> list[tuple[dict, int] | Exception]:
    """Insert every item's messages in one statement; return each item's (body, status).

    An item whose Idempotency-Key was seen gets the stored answer (and inserts nothing), or an
    `IdempotencyConflict` if the body differs; the other items are unaffected.
    """
    keyed = sorted({(i.key_id, i.idem) for i in items if i.idem is not None})
    for key_id, idem in keyed:  # in one order, so concurrent batches cannot deadlock
        idempotency.lock(conn, key_id, idem)
    results: list[tuple[dict, int] | Exception | None] = [None] * len(items)
    fresh: list[int] = []
    seen: dict[tuple[int, str], int] = {}
    twins: dict[int, int] = {}  # the same key twice in one batch: the later gets the first's answer
    for index, item in enumerate(items):
        if item.idem is not None:
            try:
                earlier = idempotency.recall(conn, item.key_id, item.idem, item.request_hash)
            except idempotency.IdempotencyConflict as exc:
                results[index] = exc
                continue
            if earlier is not None:
                results[index] = earlier
                continue
            first = seen.get((item.key_id, item.idem))
            if first is not None:
                twins[index] = first
                continue
            seen[(item.key_id, item.idem)] = index
        fresh.append(index)
    rows = insert_outbound(conn, [m for i in fresh for m in items[i].messages])
    at = 0
    for index in fresh:
        item = items[index]
        mine = rows[at:at + len(item.messages)]
        at += len(item.messages)
        body, status = item.answer(mine)
        if item.idem is not None:
            idempotency.remember(conn, item.key_id, item.idem, item.request_hash, status, body)
        results[index] = (body, status)
    for index, first in twins.items():
        same = items[index].request_hash == items[first].request_hash
        results[index] = results[first] if same else idempotency.IdempotencyConflict(items[index].idem)
    return results  # type: ignore[return-value]
