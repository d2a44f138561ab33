"""Virtual gateway phones: `smsgw simulate`, and the fleet the benchmark and tests drive.

Each phone registers over REST (keys kept in a JSON file, so a rerun rotates the same devices'
keys instead of piling up new ones), holds an Action Cable socket to `/cable` the way the real
client does (subprotocols, welcome, subscribe, stale detection after 6 s without a frame,
reconnect with backoff, obey `disconnect` with `reconnect:false`), answers `send_sms` with
`sent` then `delivered` (or `failed`), and sends heartbeats and, if asked, inbound SMS.

Delivery is at least once: a phone that sees a message again (after a reconnect or failover)
reports it again, and `FleetStats` counts it once. Times in `FleetStats` come from
`time.monotonic()`, the system-wide clock, so another process (the benchmark's senders) can
match them by message_id.
"""

from __future__ import annotations

import argparse
import collections
import functools
import heapq
import json
import logging
import math
import random
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import attrs
import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, connect_websocket_url
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from actors.backoff import exponential_delay
from bench.fleet_keys import DEFAULT_KEYS_PATH, RegistrationFailed, register_phones, stored_phones  # noqa: F401
from bench.fleet_stats import FleetStats, latencies, percentile  # noqa: F401
from bench.frames import SUBPROTOCOLS, ServerFrame, classify, identifier_for, perform, subscribe  # noqa: F401

__all__ = ["DEFAULT_KEYS_PATH", "FleetStats", "RegistrationFailed", "ServerFrame", "classify", "latencies",
           "percentile", "register_phones", "run_cli", "run_fleet", "stored_phones"]

log = logging.getLogger("smsgw.simulator")

STALE_AFTER = 6.0          # the JS client reconnects after 6 s without any frame
HANDSHAKE_DEADLINE = 10.0  # welcome and confirm_subscription must come within this
REMEMBERED = 10_000        # message_ids a phone remembers having reported, for repeats
RECONNECT_BASE = 3.0       # seconds before the first reconnect, doubling up to 30 s
REPORT_BATCH = 64          # reports written in one socket write at most


class _StopForGood(Exception):
    """The server said not to reconnect (or the protocol is unsupported)."""


_CONNECTION_LOST = (OSError, ConnectionClosed, HandshakeError, trio.BrokenResourceError, trio.TooSlowError)


def _leaves(exc: BaseException):
    """The exceptions inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


async def run_fleet(url: str, gateways: int, *, delivery_ms: float = 200, fail_rate: float = 0.0,
                    inbound_every: float = 0.0, prefix: str = "sim", keys_path: Path = DEFAULT_KEYS_PATH,
                    stats: FleetStats | None = None, register: bool = True, heartbeat_every: float = 30.0,
                    connect_concurrency: int = 64, rand: random.Random | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run `gateways` phones against the server at `url` (http base URL) until cancelled.

    `task_status.started(stats)` once every phone has been subscribed once (or been told to
    stop). With `register=False` the keys come from `keys_path` as they are. Cancellation
    closes every socket; messages a phone held unreported go back to the server's queue.
    """
    stats = FleetStats() if stats is None else stats
    rand = rand or random.Random()
    if register:
        phones = await register_phones(url, gateways, prefix=prefix, keys_path=keys_path)
    else:
        phones = stored_phones(keys_path, gateways, prefix=prefix)
    ws_base = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + "/cable"
    behaviour = _Behaviour(delivery_ms=delivery_ms, fail_rate=fail_rate, inbound_every=inbound_every,
                           heartbeat_every=heartbeat_every)
    connecting = trio.CapacityLimiter(connect_concurrency)
    stats._expect(len(phones))
    async with trio.open_nursery() as nursery:
        for device_id, key in phones:
            phone = _Phone(device_id=device_id, key=key, ws_url=f"{ws_base}?api_key={key}", behaviour=behaviour,
                           stats=stats, rand=random.Random(rand.random()), connecting=connecting)
            nursery.start_soon(_keep_going, phone)
        await stats.wait_settled()
        log.info("%d phones subscribed (%d told to stop)", len(phones) - stats.stopped, stats.stopped)
        task_status.started(stats)


async def _keep_going(phone: "_Phone") -> None:
    """One phone's life; an error it did not expect stops that phone, not the whole fleet (a
    benchmark of 10,000 sockets must not end because one of them met something odd)."""
    try:
        await phone.run()
    except Exception:  # noqa: BLE001 - logged with its traceback; the other phones go on
        log.exception("%s: stopped by an unexpected error", phone.device_id)
        phone.stats.stopped += 1
    except BaseException as exc:  # cancellation (or worse): name anything else in it, then let it go
        others = {type(e).__name__ for e in _leaves(exc) if not isinstance(e, trio.Cancelled)}
        if others:
            log.error("%s: ended by %s", phone.device_id, ", ".join(sorted(others)))
        raise


@attrs.frozen
class _Behaviour:
    delivery_ms: float
    fail_rate: float
    inbound_every: float
    heartbeat_every: float


@attrs.define(eq=False)
class _Phone:
    """One virtual phone: its socket sessions, one after another, until told to stop."""

    device_id: str
    key: str
    ws_url: str
    behaviour: _Behaviour
    stats: FleetStats
    rand: random.Random
    connecting: trio.CapacityLimiter
    identifier: str = ""
    reported: collections.OrderedDict = attrs.Factory(collections.OrderedDict)  # id -> last status
    delivering: set = attrs.Factory(set)
    socket: object | None = None  # the subscribed socket, while there is one
    _sending: trio.Nursery | None = None  # where SMS are sent from, across sockets
    # SMS being sent: (due, seq, message_id, earlier report) in a heap, one timer task for them all.
    _due: list = attrs.Factory(list)
    _due_changed: trio.Event | None = None
    _seq: int = 0
    # Reports not yet written, in order: (message_id, status). One reporter task writes all that
    # have gathered at once, on the current socket; while there is none, they wait here.
    outbox: collections.deque = attrs.Factory(collections.deque)
    _outbox_ready: trio.Event | None = None
    _timer_started: bool = False
    _reporter_started: bool = False
    subscribed_once: bool = False
    battery: int = 100

    def __attrs_post_init__(self) -> None:
        self.identifier = identifier_for(self.key)
        self.battery = self.rand.randint(40, 100)

    async def run(self) -> None:
        """Sessions one after another, with backoff between failed ones, until told to stop.

        SMS being sent outlive the socket they came on (a phone keeps sending while its
        connection drops): their reports wait in `outbox` for the next subscription.
        Cancellation kills the phone, reports and all, like pulling its battery."""
        async with trio.open_nursery() as sending:
            self._sending = sending
            await self._sessions()
            sending.cancel_scope.cancel()

    async def _sessions(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if not await self._session():
                        return
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - sorted below; anything else re-raised
                    leaves = list(_leaves(exc))
                    stop = next((e for e in leaves if isinstance(e, _StopForGood)), None)
                    if stop is not None:
                        raise stop from None
                    if not all(isinstance(e, _CONNECTION_LOST) for e in leaves):
                        log.error("%s: stopped by %s", self.device_id,
                                  ", ".join(sorted({type(e).__name__ for e in leaves})))
                        raise
                    failures += 1
                    log.info("%s: connection lost (%s); reconnecting", self.device_id,
                             ", ".join(sorted({type(e).__name__ for e in leaves})))
                # Like the JS client's connection monitor: seconds, not milliseconds, and widely
                # jittered, so a fleet dropped at once does not come back at once.
                await trio.sleep(exponential_delay(max(1, failures), base=RECONNECT_BASE, cap=30.0,
                                                   rand=self.rand.random, jitter=0.5))
        except _StopForGood as exc:
            log.warning("%s: stopping: %s", self.device_id, exc)
        finally:
            self._settle_readiness()
        self.stats.stopped += 1

    async def _session(self) -> bool:
        """One socket's life; True to reconnect (stale socket, `server_restart`).

        Raises `_StopForGood` on `reconnect:false`, a rejected subscription or an unsupported
        protocol, and a connection error when the socket fails.
        """
        async with trio.open_nursery() as nursery:
            async with self.connecting:
                with trio.fail_after(HANDSHAKE_DEADLINE):
                    ws = await connect_websocket_url(nursery, self.ws_url, subprotocols=list(SUBPROTOCOLS))
            try:
                if ws.subprotocol != SUBPROTOCOLS[0]:
                    raise _StopForGood(f"protocol is unsupported ({ws.subprotocol!r})")
                return await self._converse(ws, nursery)
            finally:
                # Cancelled (the phone is killed): the socket just drops when the connection's
                # reader task in `nursery` ends. Otherwise close politely, while it still reads.
                if trio.current_effective_deadline() != -math.inf:
                    with trio.move_on_after(2):
                        await ws.aclose()
                nursery.cancel_scope.cancel()

    async def _converse(self, ws, nursery: trio.Nursery) -> bool:
        handshake_deadline = trio.current_time() + HANDSHAKE_DEADLINE
        online = False
        try:
            while True:
                with trio.move_on_after(STALE_AFTER) as stale:
                    text = await ws.get_message()
                if stale.cancelled_caught:
                    log.info("%s: no frame for %.0f s; reconnecting", self.device_id, STALE_AFTER)
                    return True
                if not online and trio.current_time() > handshake_deadline:
                    raise trio.TooSlowError("no subscription confirmed in time")
                frame = classify(text)
                match frame.kind:
                    case "welcome":
                        await ws.send_message(subscribe(self.identifier))
                    case "confirm" if frame.identifier == self.identifier and not online:
                        online = True
                        self._went_online(ws)
                        nursery.start_soon(self._heartbeats, ws)
                        if self.behaviour.inbound_every > 0:
                            nursery.start_soon(self._inbound, ws)
                    case "reject":
                        raise _StopForGood("subscription rejected")
                    case "disconnect":
                        log.info("%s: disconnect (%s, reconnect=%s)", self.device_id, frame.reason, frame.reconnect)
                        if not frame.reconnect:
                            raise _StopForGood(f"server said {frame.reason}, reconnect false")
                        return True
                    case "send_sms":
                        self._received(frame.payload)
        finally:
            if online:
                self.socket = None
                self.stats.online -= 1

    def _settle_readiness(self) -> None:
        if not self.subscribed_once:
            self.subscribed_once = True
            self.stats._settled_once()

    def _went_online(self, ws) -> None:
        self.stats.connects += 1
        self.stats.online += 1
        self._settle_readiness()
        self.socket = ws
        self._wake_reporter()  # reports made while offline go out now

    def _received(self, payload: dict) -> None:
        message_id = str(payload.get("message_id"))
        self.stats.record_arrival(message_id)
        log.info("%s received SMS %s for %s: %s", self.device_id, message_id, payload.get("recipient"),
                 payload.get("message"))
        if message_id in self.delivering:
            return  # already on it; its report will come
        self.delivering.add(message_id)
        earlier = self.reported.get(message_id)
        delay = 0.0 if earlier is not None else self.behaviour.delivery_ms / 1000 * self.rand.uniform(0.8, 1.2)
        if delay <= 0:
            self._sent(message_id, earlier)
            return
        # A phone sends many SMS at once: one timer task for all of them, not a task each.
        self._seq += 1
        heapq.heappush(self._due, (trio.current_time() + delay, self._seq, message_id))
        if not self._timer_started:
            self._timer_started = True
            self._sending.start_soon(self._timer)
        elif self._due_changed is not None:
            self._due_changed.set()

    async def _timer(self) -> None:
        """Report each SMS in `_due` when its delivery time comes."""
        due = self._due
        while True:
            self._due_changed = trio.Event()
            with trio.move_on_at(due[0][0] if due else math.inf):
                await self._due_changed.wait()
            now = trio.current_time()
            while due and due[0][0] <= now:
                self._sent(heapq.heappop(due)[2], None)

    def _sent(self, message_id: str, earlier: str | None) -> None:
        """The SMS left the phone: report `sent`, then `delivered` or `failed`; a repeat of a
        message already reported is reported again at once (the server may have lost it)."""
        final = earlier or ("failed" if self.rand.random() < self.behaviour.fail_rate else "delivered")
        self._queue_report(message_id, "sent")
        self._queue_report(message_id, final)

    def _queue_report(self, message_id: str, status: str) -> None:
        if self.socket is None:
            self.stats.held_reports += 1
        self.outbox.append((message_id, status))
        if not self._reporter_started:
            self._reporter_started = True
            self._sending.start_soon(self._reporter)
        self._wake_reporter()

    def _wake_reporter(self) -> None:
        if self._outbox_ready is not None:
            self._outbox_ready.set()

    async def _reporter(self) -> None:
        """Write queued reports, all that have gathered at a time in one socket write, in order.
        A socket that fails or takes nothing for STALE_AFTER is dropped and the reports wait
        for the next one (`sent` always before the final report of the same message)."""
        outbox = self.outbox
        while True:
            if not outbox or self.socket is None:
                self._outbox_ready = trio.Event()
                await self._outbox_ready.wait()
                self._outbox_ready = None
                continue
            ws = self.socket
            batch = [outbox.popleft() for _ in range(min(REPORT_BATCH, len(outbox)))]
            frames = [perform(self.identifier, "delivery_report", message_id=message_id, status=status,
                              **({"error_message": "simulated failure"} if status == "failed" else {}))
                      for message_id, status in batch]
            try:
                with trio.fail_after(STALE_AFTER):
                    await send_frames(ws, frames)
            except (ConnectionClosed, trio.BrokenResourceError, trio.TooSlowError, LocalProtocolError):
                outbox.extendleft(reversed(batch))
                self.stats.held_reports += len(batch)
                if self.socket is ws:
                    self.socket = None
                    with trio.move_on_after(1):
                        await ws.aclose()
                continue
            for message_id, status in batch:
                if status == "sent":
                    continue
                self.stats.record_report(message_id, status, self.device_id)
                self.reported[message_id] = status
                self.reported.move_to_end(message_id)
                self.delivering.discard(message_id)
            while len(self.reported) > REMEMBERED:
                self.reported.popitem(last=False)

    async def _heartbeats(self, ws) -> None:
        every = self.behaviour.heartbeat_every
        await trio.sleep(self.rand.uniform(0, every))  # spread a fleet's heartbeats out
        while True:
            self.battery = max(5, self.battery - self.rand.choice((0, 0, 0, 1)))
            await self._perform(ws, "heartbeat", battery_level=self.battery,
                                signal_strength=self.rand.randint(1, 4), messages_in_queue=len(self.delivering))
            self.stats.heartbeats += 1
            await trio.sleep(every)

    async def _inbound(self, ws) -> None:
        every, count = self.behaviour.inbound_every, 0
        await trio.sleep(self.rand.uniform(0, every))
        while True:
            count += 1
            sender = f"+1415555{self.rand.randint(0, 9999):04d}"
            text = f"Hello from {sender} to {self.device_id} #{count}"
            timestamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            await self._perform(ws, "message_received", sender=sender, message=text, timestamp=timestamp)
            self.stats.inbound += 1
            log.info("%s reported inbound SMS from %s: %s", self.device_id, sender, text)
            await trio.sleep(every)

    async def _perform(self, ws, action: str, **data) -> None:
        with trio.fail_after(STALE_AFTER):
            await ws.send_message(perform(self.identifier, action, **data))


async def send_frames(ws, texts: list[str]) -> None:
    """Send text messages in order with one socket write, as a phone's writer does with the
    frames queued since its last write. trio-websocket 0.12 sends one message per write; this
    frames the others with the connection's own wsproto state under its send lock, as its
    `_send` does for one message."""
    if len(texts) == 1:
        await ws.send_message(texts[0])
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    data = b"".join(ws._wsproto.send(TextMessage(data=text)) for text in texts)
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None



def run_cli(args: argparse.Namespace) -> int:
    """`smsgw simulate`: run the fleet until Ctrl-C (exit 0, with a summary); 1 when registration
    fails or every phone is told not to reconnect; 2 for bad options."""
    if args.gateways < 1 or args.delivery_ms < 0 or not 0 <= args.fail_rate <= 1 or args.inbound_every < 0:
        print("smsgw simulate: --gateways >= 1, --delivery-ms >= 0, --fail-rate in 0..1, "
              "--inbound-every >= 0", file=sys.stderr)
        return 2
    log.setLevel(logging.INFO)  # the received-SMS lines are the point (OTP codes are read here)
    keys_path = Path(getattr(args, "keys", None) or DEFAULT_KEYS_PATH)
    stats = FleetStats()
    fleet = functools.partial(run_fleet, args.url.rstrip("/"), args.gateways, delivery_ms=args.delivery_ms,
                              fail_rate=args.fail_rate, inbound_every=args.inbound_every, prefix=args.prefix,
                              keys_path=keys_path, stats=stats)
    try:
        trio.run(fleet)
        print("smsgw simulate: every phone was told not to reconnect (see the log)", file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C and the failures a user can act on
        leaves = list(_leaves(exc))
        failure = next((e for e in leaves if isinstance(e, (RegistrationFailed, httpx.HTTPError))), None)
        if failure is not None:
            print(f"smsgw simulate: {failure}", file=sys.stderr)
            return 1
        if not any(isinstance(e, KeyboardInterrupt) for e in leaves):
            raise
    summary = stats.summary()
    print("smsgw simulate: " + ", ".join(f"{k} {v}" for k, v in summary.items() if v is not None), file=sys.stderr)
    return 0


async def _worker(opts: argparse.Namespace) -> None:
    """The fleet as a process of its own for the benchmark: prints `online <n> <connects>` every
    second and `ready` once every phone is subscribed, runs until SIGTERM/SIGINT, then writes its
    stats as JSON to --stats-out."""
    stats = FleetStats()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                run_fleet, opts.url, opts.gateways, delivery_ms=opts.delivery_ms, fail_rate=opts.fail_rate,
                prefix=opts.prefix, keys_path=Path(opts.keys), stats=stats, register=not opts.no_register,
                connect_concurrency=opts.connect_concurrency))
            nursery.start_soon(_announce, stats)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    Path(opts.stats_out).write_text(json.dumps(stats.to_json()))


async def _announce(stats: FleetStats) -> None:
    ready = False
    while True:
        with trio.move_on_after(1):
            await (trio.sleep_forever() if ready else stats.wait_settled())
        if not ready and stats.settled:
            ready = True
            print("ready", flush=True)
        print(f"online {stats.online} {stats.connects}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.simulator", description=_worker.__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--gateways", type=int, required=True)
    parser.add_argument("--delivery-ms", type=float, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--keys", required=True)
    parser.add_argument("--stats-out", required=True)
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--log-level", default="WARNING")
    logging.basicConfig(level=parser.parse_known_args()[0].log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cli import tune_gc

    tune_gc()
    trio.run(_worker, parser.parse_args())
