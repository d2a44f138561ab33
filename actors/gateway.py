"""One actor per connected phone; actors/registry.py holds them.

A `GatewayActor` owns its socket's sending side, the messages handed to it and not yet
reported sent (`in_flight`), its health and its send budget (a token bucket in segments). It
lives exactly as long as its `/cable` connection; when it ends, whatever it still held goes
back to the queue. It tells its registry whenever what the dispatcher ranks it by changes.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

import attrs
import trio

from actors.choice import GatewayView
from actors.rates import TokenBucket
from actors.segments import MAX_SEGMENTS
from store.keys import new_public_id
from web import cable_protocol as cable

if TYPE_CHECKING:
    from actors.registry import GatewayRegistry

__all__ = ["GatewayActor", "Replaced", "WINDOW_LIMITED", "WINDOW_UNLIMITED"]

log = logging.getLogger("smsgw.gateway")

PING_INTERVAL = 3.0
SEND_DEADLINE = 3 * PING_INTERVAL  # a socket that cannot take a frame for 3 pings is dead
HEARTBEAT_TIMEOUT = 120.0          # no frame from the phone for 2 minutes: close it
WINDOW_LIMITED = 10                # messages handed to a rate-limited phone and not yet sent
WINDOW_UNLIMITED = 200             # ... to a phone whose limit is lifted
WRITE_BATCH = 64                   # frames written to a socket at once at most
OUTBOUND_LIMIT = WINDOW_UNLIMITED + 4  # queued messages stay within the window; the rest is for pings
PRIORITY_NAMES = {0: "high", 1: "normal", 2: "low"}


class Replaced(Exception):
    """A newer connection of the same device took over."""


@attrs.define(eq=False)
class GatewayActor:
    gateway_id: int
    device_id: str
    send_text: Callable[[str], Awaitable[None]]
    # What the dispatcher ranks a phone by: assigning them (the properties below) tells the
    # registry, which keeps its candidates in order as they change.
    _active: bool = attrs.field(alias="active")
    _priority: int = attrs.field(alias="priority")
    bucket: TokenBucket
    # Writes several frames with one socket write; without it, frames go one by one.
    send_texts: Callable[[list[str]], Awaitable[None]] | None = None
    lease: str = attrs.Factory(lambda: new_public_id("conn_", 16))  # marks what this connection holds
    _identifier: str | None = attrs.field(default=None, alias="identifier")  # the GatewayChannel subscription
    in_flight: dict[str, int] = attrs.Factory(dict)  # message_id -> segments (changed through methods)
    battery_level: int | None = None
    signal_strength: int | None = None
    messages_in_queue: int | None = None
    last_heartbeat_at: datetime | None = None
    last_frame_at: float = 0.0
    connected_at: float = 0.0
    _run_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)  # `close` ends `run` through it
    close_reason: str | None = None
    # Frames and messages handed over and not yet written, in order; `run` alone writes them
    # (so no lock), and wakes on `_outbound_ready`. Plain, small structures: an idle phone
    # holds little more than its socket.
    # (A list, not a deque: an empty deque keeps a block of 64 slots, 760 bytes a phone.)
    _outbound: list = attrs.Factory(list)
    _outbound_ready: trio.Event | None = None
    _writing_since: float | None = None  # when the write under way began
    # The registry's bookkeeping of this actor (see `GatewayRegistry.updated`).
    _registry: "GatewayRegistry | None" = None  # told of changes (a reference: no bound method per phone)
    stamp: int = 0  # which of the registry's candidate entries for this actor is current
    prev_stamp: int = 0  # ... and which was current when the latest ranking was taken
    room: int = 0   # what this actor adds to the registry's `free`
    # Messages promised to this phone by an accepting transaction not yet committed (see
    # `Dispatcher.plan_handoff`), and their segments: they count against its window and budget.
    reserved: int = 0
    reserved_segments: int = 0

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = value
        self._changed()

    @property
    def priority(self) -> int:
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        self._priority = value
        self._changed()

    @property
    def identifier(self) -> str | None:
        return self._identifier

    @identifier.setter
    def identifier(self, value: str | None) -> None:
        self._identifier = value
        self._changed()

    def _changed(self) -> None:
        if self._registry is not None:
            self._registry.updated(self)

    @property
    def subscribed(self) -> bool:
        return self._identifier is not None

    @property
    def window(self) -> int:
        return WINDOW_UNLIMITED if self.bucket.unlimited else WINDOW_LIMITED

    def queue(self, text: str) -> None:
        """Queue a ready frame (welcome, a subscription answer) behind what is queued."""
        self._outbound.append(text)
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._outbound_ready is not None:
            self._outbound_ready.set()

    async def _write(self, texts: list[str]) -> None:
        """Send frames in order (written together when `send_texts` can). A write that takes
        longer than SEND_DEADLINE is found by the keepalive, which closes the actor: no
        deadline of its own per write (a cancel scope per ping adds up over 10,000 sockets)."""
        self._writing_since = trio.current_time()
        try:
            if self.send_texts is not None:
                await self.send_texts(texts)
            else:
                for text in texts:
                    await self.send_text(text)
        finally:
            self._writing_since = None

    def close(self, reason: str) -> None:
        """Ask the connection to end (idempotent); `run` returns and the socket closes."""
        if self.close_reason is None:
            self.close_reason = reason
            self._changed()
        self._run_scope.cancel()

    async def run(self) -> None:
        """Write the phone's outbound frames until the socket closes or `close` is called.

        Cancellation (the socket closed) ends it at once; cleanup belongs to the registry.
        Pings and the heartbeat watch come from the registry's one ticker (`keepalive`). The
        writer runs in this task (no task of its own: thousands of idle phones each keep one
        task fewer), and `close` cancels it.
        """
        self.last_frame_at = self.connected_at = trio.current_time()
        with self._run_scope:
            await self._writer()

    def keepalive(self, now: float, ping: str) -> None:
        """One tick of the keepalive: close a phone silent past the heartbeat timeout, else
        queue a ping (skipped when the queue is full: frames are going out anyway). A socket
        that has not taken a write for SEND_DEADLINE is closed as stalled."""
        if now - self.last_frame_at > HEARTBEAT_TIMEOUT:
            self.close("heartbeat_timeout")
            return
        if self._writing_since is not None and now - self._writing_since > SEND_DEADLINE:
            self.close("stalled")
            return
        if len(self._outbound) < OUTBOUND_LIMIT:
            self._outbound.append(ping)
            self._wake_writer()

    def noticed(self) -> None:
        """Any frame from the phone proves it alive."""
        self.last_frame_at = trio.current_time()

    def record_heartbeat(self, battery_level: int | None, signal_strength: int | None,
                         messages_in_queue: int | None) -> None:
        self.noticed()
        self.last_heartbeat_at = datetime.now(timezone.utc)
        if battery_level is not None:
            self.battery_level = battery_level
        if signal_strength is not None:
            self.signal_strength = signal_strength
        if messages_in_queue is not None:
            self.messages_in_queue = messages_in_queue

    @property
    def load(self) -> int:
        """Messages held or promised: what counts against the window."""
        return len(self.in_flight) + self.reserved

    def view(self, now: float) -> GatewayView:
        """What the dispatcher's choice policy needs to know of this phone now."""
        available = self.bucket.available(now)
        if not math.isinf(available) and available >= self.bucket.capacity - 1e-9:
            # A full bucket takes even a message longer than its capacity (one, then it is empty).
            available = max(available, float(MAX_SEGMENTS))
        load = self.load
        return GatewayView(gateway_id=self.gateway_id, priority=self.priority, active=self.active,
                           online=self.close_reason is None, subscribed=self.subscribed and self.window > load,
                           in_flight=load, queue_depth=0, budget=available - self.reserved_segments)

    def reserve(self, count: int, segments: int) -> None:
        """Hold room and budget for `count` messages (`segments` in all) that a transaction is
        about to write as dispatched to this phone; `release` them once it has ended."""
        self.reserved += count
        self.reserved_segments += segments
        self._changed()

    def release(self, count: int, segments: int) -> None:
        self.reserved -= count
        self.reserved_segments -= segments
        self._changed()

    def hand(self, row: dict) -> bool:
        """Take one dispatched message into this phone's outbound queue (never blocks); its
        writer sends it as `send_sms`. False if the queue cannot take it, or its send budget
        cannot (the caller requeues).

        The dispatcher hands a whole batch over without waiting on any socket: each phone's
        writer sends its own frames, so a batch goes out over all phones at once.
        """
        if len(self._outbound) >= OUTBOUND_LIMIT or self.close_reason is not None:
            return False
        if not self.bucket.try_take(row["segments"], trio.current_time()):
            return False  # spent meanwhile (a round and a hand-off planned at once): never over the rate
        self._outbound.append(row)
        self._wake_writer()
        self.in_flight[row["message_id"]] = row["segments"]
        self._changed()
        return True

    async def _writer(self) -> None:
        """Send what is handed over: all that has gathered at a time, as one write."""
        while True:
            if not self._outbound:
                self._outbound_ready = trio.Event()
                await self._outbound_ready.wait()
                self._outbound_ready = None
                continue
            if len(self._outbound) <= WRITE_BATCH:
                items, self._outbound = self._outbound, []
            else:
                items = self._outbound[:WRITE_BATCH]
                del self._outbound[:WRITE_BATCH]
            frames = [frame for frame in map(self._frame, items) if frame is not None]
            if frames:
                await self._write(frames)

    def _frame(self, item: str | dict) -> str | None:
        if isinstance(item, str):  # a ready frame (a ping)
            return item
        if self.identifier is None or item["message_id"] not in self.in_flight:
            return None  # unsubscribed, or settled/taken back meanwhile: the store has it
        return cable.message(self.identifier, {
            "action": "send_sms", "message_id": item["message_id"], "recipient": item["phone_number"],
            "message": item["body"], "segments": item["segments"],
            "priority": PRIORITY_NAMES.get(item.get("priority", 1), "normal"),
        })

    def settled(self, *message_ids: str) -> None:
        """The phone reported on these messages: they no longer count against the window."""
        held = len(self.in_flight)
        for message_id in message_ids:
            self.in_flight.pop(message_id, None)
        if len(self.in_flight) != held:
            self._changed()

    def drop_in_flight(self) -> list[str]:
        """Forget every message held (the store returned them to the queue); their ids."""
        held = list(self.in_flight)
        self.in_flight.clear()
        self._changed()
        return held

    def snapshot(self) -> dict:
        return {
            "online": self.subscribed and self.close_reason is None, "connected": True,
            "in_flight": len(self.in_flight), "queue_depth": self.messages_in_queue or 0,
            "battery_level": self.battery_level, "signal_strength": self.signal_strength,
            "last_heartbeat_at": self.last_heartbeat_at,
        }
