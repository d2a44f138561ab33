"""The OTP actor: issues one-time passwords (sent as ordinary high-priority SMS through the
dispatcher) and checks them.

Routes ask it through its bounded mailbox (`send`, `verify`): each request is a frozen message
with a one-shot reply channel, answered under a deadline. The actor serves up to
`concurrency` requests at once, each one transaction in PostgreSQL (store/otp.py), which is
where the limits and the single-use rule are enforced, so several nodes can share them. When
all its slots are busy it stops reading, its mailbox fills, and callers wait: back-pressure
instead of a pile-up of database work.

The pure core (code, digest, text, the clock arithmetic) is at the bottom of this module.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timedelta
from typing import Callable

import attrs
import trio

from actors.clock import WallClock
from actors.segments import segments_for
from store import otp as otp_store
from store.messages import NewMessage
from store.otp import Checked, Issued, Limited
from store.pool import Store

__all__ = ["OtpActor", "OtpBusy", "SendOtp", "VerifyOtp", "Issued", "Limited", "Checked",
           "new_code", "code_digest", "render_text", "SENDS_PER_PHONE_PER_HOUR", "MAX_ATTEMPTS"]

log = logging.getLogger("smsgw.otp")

SENDS_PER_PHONE_PER_HOUR = 3   # the seed's limit
MAX_ATTEMPTS = 3               # otp_codes.attempts_remaining starts here (schema default)
REPLY_DEADLINE = 10.0          # mailbox wait + one transaction (pool timeout 5 s, statement timeout)
CLEANUP_DEADLINE = 30.0
MAILBOX_SIZE = 64


class OtpBusy(Exception):
    """The actor did not answer in time (mailbox full or the database slow); the caller answers 503."""


@attrs.frozen
class SendOtp:
    phone_number: str   # E.164
    purpose: str
    expiry_minutes: int
    api_key_id: int | None
    deadline: float     # trio time after which nobody waits for the answer: skip it
    reply: trio.MemorySendChannel


@attrs.frozen
class VerifyOtp:
    phone_number: str
    purpose: str
    code: str
    api_key_id: int | None  # only a code this key sent can be verified
    deadline: float
    reply: trio.MemorySendChannel


@attrs.define(eq=False)
class OtpActor:
    store: Store
    clock: WallClock
    secret: bytes
    wake_dispatcher: Callable[[], None]
    inbox: trio.MemorySendChannel          # routes put requests here (through send/verify)
    mailbox: trio.MemoryReceiveChannel     # the actor reads them here
    template: str = "Your verification code is: {code}"
    per_phone_per_hour: int = SENDS_PER_PHONE_PER_HOUR
    per_key_per_hour: int = 100            # 0: no per-key limit
    concurrency: int = 4
    metrics: object = None                 # actors.metrics.NodeMetrics, when the node has one
    # The dispatcher's hand-off (Dispatcher.plan_handoff, finish_handoff), when the node has
    # one: a code's SMS goes straight to a phone with room, written dispatched by its transaction.
    plan_handoff: Callable | None = None
    finish_handoff: Callable | None = None

    @classmethod
    def create(cls, *, store: Store, settings, clock: WallClock, wake_dispatcher: Callable[[], None]) -> "OtpActor":
        """An actor wired from the node's settings, with a fresh bounded mailbox."""
        inbox, mailbox = trio.open_memory_channel(MAILBOX_SIZE)
        return cls(store=store, clock=clock, secret=settings.secret_key_base.encode(),
                   wake_dispatcher=wake_dispatcher, inbox=inbox, mailbox=mailbox,
                   template=settings.otp_message_template,
                   per_key_per_hour=settings.otp_sends_per_key_per_hour,
                   concurrency=max(1, settings.db_pool_size // 2))

    # The callers' side: put a request in the mailbox, wait for its answer.

    async def send(self, phone_number: str, purpose: str, expiry_minutes: int, api_key_id: int | None,
                   *, timeout: float = REPLY_DEADLINE) -> Issued | Limited:
        """Issue a code and queue its SMS, or say which hourly limit refused it.

        Raises `OtpBusy` past `timeout`. A caller cancelled after the actor took the request
        may still have had its code issued and its SMS queued (the transaction commits whole).
        """
        return await self._ask(lambda reply, deadline: SendOtp(
            phone_number, purpose, expiry_minutes, api_key_id, deadline, reply), timeout)

    async def verify(self, phone_number: str, purpose: str, code: str, *, api_key_id: int | None = None,
                     timeout: float = REPLY_DEADLINE) -> Checked:
        """Check a code, spending one attempt of the open code `api_key_id` sent; raises
        `OtpBusy` past `timeout`.

        A caller cancelled after the actor took the request may have spent that attempt."""
        return await self._ask(lambda reply, deadline: VerifyOtp(
            phone_number, purpose, code, api_key_id, deadline, reply), timeout)

    async def _ask(self, make: Callable[[trio.MemorySendChannel, float], SendOtp | VerifyOtp], timeout: float):
        reply_send, reply_receive = trio.open_memory_channel(1)
        deadline = trio.current_time() + timeout
        try:
            with trio.fail_at(deadline):
                await self.inbox.send(make(reply_send, deadline))
                async with reply_receive:
                    outcome = await reply_receive.receive()
        except trio.TooSlowError:
            raise OtpBusy("the OTP service did not answer in time") from None
        if isinstance(outcome, BaseException):
            raise outcome
        if self.metrics is not None:
            if isinstance(outcome, Issued):
                self.metrics.otp_sent()
            elif isinstance(outcome, Checked):
                self.metrics.otp_verified("verified" if outcome.verified else "invalid")
        return outcome

    # The actor's side.

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until cancelled, up to `concurrency` at a time.

        A request whose caller has stopped waiting is skipped. A request that fails (the
        database down, say) gets its exception as the answer; the actor goes on. Cancellation
        cancels the requests in progress, whose transactions then roll back or commit whole.
        """
        slots = trio.Semaphore(self.concurrency)
        task_status.started()
        async with trio.open_nursery() as nursery:
            async for request in self.mailbox:
                await slots.acquire()  # all busy: stop reading, let the mailbox fill
                nursery.start_soon(self._serve, request, slots)

    async def _serve(self, request: SendOtp | VerifyOtp, slots: trio.Semaphore) -> None:
        try:
            if trio.current_time() >= request.deadline:
                return
            try:
                match request:
                    case SendOtp():
                        outcome = await self._issue(request)
                    case VerifyOtp():
                        outcome = await self._check(request)
            except Exception as exc:  # the asker re-raises it; this actor is not at fault
                outcome = exc
            try:
                request.reply.send_nowait(outcome)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the caller gave up waiting
        finally:
            slots.release()

    async def _issue(self, request: SendOtp) -> Issued | Limited:
        code = new_code()
        text = render_text(self.template, code, request.purpose)
        seg = segments_for(text)
        # The SMS lives no longer than its code: one still queued at expiry fails as "expired".
        message = NewMessage(phone_number=request.phone_number, body=text, segments=seg.segments,
                             encoding=seg.encoding, api_key_id=request.api_key_id,
                             ttl_seconds=request.expiry_minutes * 60, priority=0)
        now = self.clock.now()
        handoff = None
        if self.plan_handoff is not None:
            handoff = self.plan_handoff([(0, message.segments, message.priority)])
        committed = False
        try:
            # Shielded with a hand-off: a message written dispatched to a phone is handed to it.
            with trio.CancelScope(shield=handoff is not None):
                outcome = await self.store.run(
                    otp_store.issue, code_hash=code_digest(self.secret, request.phone_number, request.purpose, code),
                    purpose=request.purpose, message=message, now=now,
                    expires_at=now + timedelta(minutes=request.expiry_minutes),
                    per_phone=self.per_phone_per_hour, per_key=self.per_key_per_hour, handoff=handoff)
            committed = True
        finally:
            if handoff is not None:
                self.finish_handoff(handoff, committed)  # hands it over, or wakes a round if it queued
        if isinstance(outcome, Issued) and handoff is None:
            self.wake_dispatcher()
        return outcome

    async def _check(self, request: VerifyOtp) -> Checked:
        return await self.store.run(
            otp_store.check, phone=request.phone_number, purpose=request.purpose,
            code_hash=code_digest(self.secret, request.phone_number, request.purpose, request.code),
            now=self.clock.now(), key_id=request.api_key_id)

    async def cleanup_expired(self) -> int:
        """Delete codes expired, spent or replaced over an hour ago (the scheduler's 15-minute
        job); return how many. Idempotent, so a cancelled or repeated run is harmless.

        It goes straight to the store, not through the mailbox: it shares no state with the
        requests (one DELETE on rows no open code needs) and answers only its own caller."""
        with trio.fail_after(CLEANUP_DEADLINE):
            return await self.cleanup(self.clock.now())

    async def cleanup(self, now: datetime) -> int:
        """`cleanup_expired` as of `now`."""
        removed = await self.store.run(otp_store.cleanup, now)
        if removed:
            log.info("removed %d old OTP codes", removed)
        return removed


# The pure core.

def new_code() -> str:
    """Six decimal digits from `secrets`, leading zeros kept."""
    return f"{secrets.randbelow(10**6):06d}"


def code_digest(secret: bytes, phone_number: str, purpose: str, code: str) -> str:
    """Hex HMAC-SHA256 of (phone, purpose, code) under the node's secret: what is stored."""
    return hmac.new(secret, f"{phone_number}\x00{purpose}\x00{code}".encode(), hashlib.sha256).hexdigest()


def render_text(template: str, code: str, purpose: str) -> str:
    """The SMS text: `template` (validated at load) with {code} and {purpose} filled in."""
    return template.format(code=code, purpose=purpose)
