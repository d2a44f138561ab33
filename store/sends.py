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

__all__ = ["SendItem", "handoff_candidates", "write_sends"]


@attrs.frozen
class SendItem:
    key_id: int
    messages: tuple[NewMessage, ...]
    answer: Callable[[list[dict]], tuple[dict, int]]  # pure: inserted rows -> (body, status)
    idem: str | None = None
    request_hash: str = ""


def handoff_candidates(items: Sequence[SendItem]) -> list[tuple[tuple[int, int], int, int]]:
    """The messages of a batch that are due now, as the dispatcher's `plan_handoff` takes
    them: ((item index, message index), segments, priority)."""
    return [((i, j), m.segments, m.priority) for i, item in enumerate(items)
            for j, m in enumerate(item.messages) if m.send_at is None]


def write_sends(conn: psycopg.Connection, items: Sequence[SendItem], handoff=None) -> list[tuple[dict, int] | Exception]:
    """Insert every item's messages in one statement; return each item's (body, status).

    An item whose Idempotency-Key was seen gets the stored answer (and inserts nothing), or an
    `IdempotencyConflict` if the body differs; the other items are unaffected.

    With a `handoff` (actors.dispatcher.Handoff, keyed as `handoff_candidates`), the messages it
    chose a phone for are written dispatched to it; their rows go to `handoff.rows`, and
    `handoff.queued` tells whether any due message was left queued. Their answer still says
    `queued`, the status of an accepted message in the API's contract: handing it over in
    the same transaction is the dispatcher's business, as a claim right after it would be.
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
    chosen = handoff.chosen if handoff is not None else {}
    rows = insert_outbound(conn, [m for i in fresh for m in items[i].messages],
                           [chosen.get((i, j)) for i in fresh for j in range(len(items[i].messages))] if chosen else ())
    if handoff is not None:
        handoff.rows = [row for row in rows if row["status"] == "dispatched"]
        handoff.queued = any(row["status"] == "queued" for row in rows)
    at = 0
    for index in fresh:
        item = items[index]
        mine = [{**row, "status": "queued"} if row["status"] == "dispatched" else row
                for row in rows[at:at + len(item.messages)]]
        at += len(item.messages)
        body, status = item.answer(mine)
        if item.idem is not None:
            idempotency.remember(conn, item.key_id, item.idem, item.request_hash, status, body)
        results[index] = (body, status)
    for index, first in twins.items():
        same = items[index].request_hash == items[first].request_hash
        results[index] = results[first] if same else idempotency.IdempotencyConflict(items[index].idem)
    return results  # type: ignore[return-value]
