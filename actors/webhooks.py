"""The webhook actor: posts due rows of the durable outbox, signed, with retries.

Rows are written by `store.outbox.emit` in the transaction of the change that causes them, and
`pg_notify('smsgw_webhooks')` at that commit wakes the actor of every node (it LISTENs on a
dedicated connection); `wake()` does the same in-process, and a slow sweep picks up retries
whose backoff has ended. Each round claims at most as many due rows as there are idle workers
(`FOR UPDATE SKIP LOCKED`, leased by pushing `next_attempt_at` past the request timeout), and
a fixed pool of `concurrency` workers posts them through one shared `httpx.AsyncClient`.

A 2xx answer is success. Anything else (another status, a redirect, a connection error, the
timeout) is retried on `WEBHOOK_RETRY_SCHEDULE` with jitter, and after the last retry the row
is dead. All state is in the table, so retries survive restarts; a POST cut short by shutdown
is simply tried again once its lease runs out (at least once: receivers deduplicate on
`X-Webhook-Id`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from datetime import datetime, timedelta, timezone
from typing import Callable

import attrs
import httpx
import trio

from actors.backoff import WEBHOOK_RETRY_SCHEDULE, scheduled_delay
from store import webhooks as webhooks_store
from store.outbox import WAKE_CHANNEL
from store.notifications import listen_forever
from store.pool import Store

__all__ = ["WebhookActor", "sign", "encode_body", "delivery_headers", "retry_at", "USER_AGENT"]

log = logging.getLogger("smsgw.webhooks")

USER_AGENT = "smsgw-webhooks/1"
SWEEP_INTERVAL = 5.0        # retries that came due, and anything a lost notification missed
LEASE_MARGIN = 30.0         # a claimed row stays ours for timeout + this
_HEAD = ("event", "event_id", "timestamp")


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `body` keyed with the UTF-8 bytes of `secret` (X-Webhook-Signature)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def encode_body(payload: dict) -> bytes:
    """The exact bytes posted (and signed): compact UTF-8 JSON, `event`, `event_id` and
    `timestamp` first, then the other fields as stored."""
    ordered = {key: payload[key] for key in _HEAD if key in payload}
    ordered.update((key, value) for key, value in payload.items() if key not in _HEAD)
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def delivery_headers(*, event: str, event_id: str, timestamp: int, signature: str | None) -> dict[str, str]:
    """The headers of one attempt; `timestamp` is the attempt's time in Unix seconds."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Id": event_id,
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Event": event,
    }
    if signature is not None:
        headers["X-Webhook-Signature"] = signature
    return headers


def retry_at(attempts: int, now: datetime, rand: Callable[[], float]) -> datetime | None:
    """When to try again after `attempts` failed attempts (1-based), or None: give up."""
    delay = scheduled_delay(WEBHOOK_RETRY_SCHEDULE, attempts, rand=rand)
    return None if delay is None else now + timedelta(seconds=delay)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@attrs.define(eq=False)
class WebhookActor:
    store: Store
    concurrency: int = 10
    timeout: float = 10.0
    now: Callable[[], datetime] = _utc_now   # the wall clock of next_attempt_at and delivered_at
    rand: Callable[[], float] = random.random
    listen: bool = True                      # LISTEN for commits of other transactions and nodes
    metrics: object = None                   # actors.metrics.NodeMetrics, when the node has one
    _wakeup: trio.Event = attrs.Factory(trio.Event)
    _slot_freed: trio.Event = attrs.Factory(trio.Event)
    _busy: int = 0

    def wake(self) -> None:
        """Ask for a delivery round soon; never blocks, safe from any task."""
        self._wakeup.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled. Cancellation drops the attempts in flight (their leases run
        out and they are tried again); a crash propagates to the supervisor."""
        self._busy = 0
        send, receive = trio.open_memory_channel[dict](self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        # httpx's own timeout is a backstop; the per-attempt deadline below is the rule.
        async with httpx.AsyncClient(follow_redirects=False, timeout=self.timeout + 1.0, limits=limits,
                                     trust_env=False) as client, trio.open_nursery() as nursery:
            async with receive:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._worker, client, receive.clone())
            if self.listen:
                nursery.start_soon(self._listen)
            task_status.started()
            async with send:
                while True:
                    self._wakeup = trio.Event()
                    await self.deliver_due(send)
                    with trio.move_on_after(SWEEP_INTERVAL):
                        await self._wakeup.wait()

    async def deliver_due(self, send: trio.MemorySendChannel[dict]) -> int:
        """Claim what is due now, as much as idle workers can take, and hand it to them;
        return how many rows were claimed. Waits for a free worker when all are busy."""
        total = 0
        while True:
            free = self.concurrency - self._busy
            if free <= 0:
                self._slot_freed = trio.Event()
                await self._slot_freed.wait()
                continue
            rows = await self.store.run(webhooks_store.claim_due, self.now(), free,
                                        self.timeout + LEASE_MARGIN)
            for row in rows:
                self._busy += 1
                send.send_nowait(row)  # never blocks: the buffer holds `concurrency` rows
            total += len(rows)
            if len(rows) < free:
                return total

    async def _worker(self, client: httpx.AsyncClient, receive: trio.MemoryReceiveChannel[dict]) -> None:
        async with receive:
            async for row in receive:
                try:
                    await self._attempt(client, row)
                finally:
                    self._busy -= 1
                    self._slot_freed.set()

    async def _attempt(self, client: httpx.AsyncClient, row: dict) -> None:
        """POST one leased row and record the outcome (the write is shielded, so an answer
        that arrived is never forgotten)."""
        body = encode_body(row["payload"])
        secret = row["secret_key"]
        headers = delivery_headers(event=row["event"], event_id=row["event_id"],
                                   timestamp=int(self.now().timestamp()),
                                   signature=sign(secret, body) if secret else None)
        status: int | None = None
        error: str | None = None
        with trio.move_on_after(self.timeout) as deadline:
            try:
                # Streamed and never read: only the status matters, whatever the body's size.
                async with client.stream("POST", row["url"], content=body, headers=headers) as response:
                    status = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                error = _short_error(exc)
        if deadline.cancelled_caught and status is None:
            error = f"timeout after {self.timeout:g} s"
        done = self.now()
        with trio.CancelScope(shield=True):
            if status is not None and 200 <= status < 300:
                await self.store.run(webhooks_store.record_delivered, row["id"], status, done)
                self._count("delivered")
                return
            if error is None:
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            attempts = row["attempts"] + 1
            next_try = retry_at(attempts, done, self.rand)
            await self.store.run(webhooks_store.record_failed, row["id"], status, error, next_try)
            self._count("failed" if next_try is not None else "dead")
        log.info("webhook delivery %s to %s failed (attempt %d): %s", row["id"], row["url"], attempts, error)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_delivery(outcome)

    async def _listen(self) -> None:
        """Wake on every `NOTIFY smsgw_webhooks` (and after each reconnection, for whatever
        was committed while nobody listened)."""
        await listen_forever(self.store.pool.conninfo, [WAKE_CHANNEL], name="webhooks",
                             on_notify=lambda channel, payload: self.wake(), on_connect=self.wake)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:200]
