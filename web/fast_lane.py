"""HTTP/1.1 requests served straight to the ASGI app, WebSockets handed to Hypercorn.

Hypercorn's HTTP/1.1 path (h11 in pure Python, a task group, a stream object, locks and events
per request) cost about 0.7 ms of CPU for a trivial keep-alive POST on this kind of machine; the
same POST parsed by httptools (llhttp, in C) on a bare trio socket cost 0.06 ms. `FastLane`
serves every plain HTTP/1.1 (and 1.0) request that way, one at a time per connection, in order
(pipelined requests wait in the socket), to the same ASGI app. A connection whose request asks
for an Upgrade (the `/cable` WebSockets, h2c), or whose first bytes are not HTTP/1.x (HTTP/2
prior knowledge, garbage), is handed to Hypercorn's own `TCPServer` from that request on, with
the bytes already read replayed, so everything but plain requests keeps Hypercorn's behaviour.

Between requests an idle connection closes after `keep_alive_timeout`, and at once when the
server shuts down; a request being served is finished first and answered with
`connection: close`. Bodies over `max_body` are refused with 413 before they are read.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import os
import time
from typing import Awaitable, Callable
from urllib.parse import unquote

import attrs
import httptools
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr

from web.asgi_response import REASONS, AsgiResponse, send_all_now

__all__ = ["FastLane"]

log = logging.getLogger("smsgw.http")
MAX_RECV = 2**16


@attrs.define(eq=False)
class FastLane:
    """The connection handler for `trio.serve_listeners`: one call per accepted connection."""

    app: Callable[..., Awaitable[None]]   # the ASGI app, called directly for plain requests
    wrapped: object                       # the same app wrapped for Hypercorn's TCPServer
    config: Config
    context: WorkerContext
    state: LifespanState
    max_body: int
    body_too_large: str          # the 413's error text (the app's own words)
    max_head: int = 16 * 1024    # as Hypercorn's h11_max_incomplete_size
    _idle: set[trio.CancelScope] = attrs.Factory(set)  # connections waiting for a request
    _date: tuple[int, bytes] = (0, b"")
    # One for every connection handed over, as Hypercorn's own serve loop shares one.
    _handed_state: ConnectionState = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._handed_state = ConnectionState(self.state.copy())

    async def watch_shutdown(self) -> None:
        """Close idle connections once the server is terminating (run beside the listeners)."""
        await self.context.terminated.wait()
        for scope in list(self._idle):
            scope.cancel()

    async def __call__(self, stream: trio.SocketStream) -> None:
        prefix = await self._serve_http(stream)
        if prefix is None:
            with trio.CancelScope(shield=True):
                await _close(stream)
            return
        # A phone's socket lives for hours: this frame keeps nothing of its HTTP side.
        server = _HandedOver(self.wrapped, self.config, self.context, self._handed_state, stream, prefix=prefix)
        del prefix
        await server

    async def _serve_http(self, stream: trio.SocketStream) -> bytes | None:
        """Serve the connection's HTTP requests; the bytes to hand to Hypercorn with the
        connection, or None once it is done."""
        # One cancel scope for the connection's idle waits, its deadline set while it waits
        # (`receive_idle`): a scope per read added up at thousands of requests a second.
        with trio.CancelScope() as idle:
            try:
                first = await self.receive_idle(stream, idle)
                if not first:
                    return None
                if _asks_upgrade(first):  # a phone's socket: to Hypercorn before any parser is made
                    return first
                connection = _Connection(self, stream, idle)
                try:
                    handoff = await connection.serve(first)
                finally:
                    connection.parser = None  # it and its callbacks (the connection) refer to each other
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
            return handoff
        return None  # idle past keep_alive_timeout, or the server is shutting down

    async def receive_idle(self, stream: trio.SocketStream, idle: trio.CancelScope) -> bytes:
        """The next bytes of a connection between requests; b"" once the server is shutting
        down. Past `keep_alive_timeout` (or at shutdown, while waiting) `idle` is cancelled."""
        if self.context.terminated.is_set():
            return b""
        idle.deadline = trio.current_time() + self.config.keep_alive_timeout
        self._idle.add(idle)
        try:
            return await stream.receive_some(MAX_RECV)
        finally:
            self._idle.discard(idle)
            idle.deadline = math.inf

    def date_header(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]


class _Connection:
    """One client connection: httptools parses, requests run one at a time, in order."""

    def __init__(self, lane: FastLane, stream: trio.SocketStream, idle: trio.CancelScope) -> None:
        self.lane = lane
        self.stream = stream
        self.idle = idle  # cancelled when the connection has waited too long for a request
        self.send_all = functools.partial(send_all_now, stream)
        self.parser = httptools.HttpRequestParser(self)
        self.raw: bytearray | None = bytearray()  # bytes before the first request's head ends
        self.requests: list[_Request] = []
        self.current: _Request | None = None
        self.head_size = 0
        self.continue_wanted = False
        self.served = 0
        sock = stream.socket
        self.client = parse_socket_addr(sock.family, sock.getpeername())
        self.server = parse_socket_addr(sock.family, sock.getsockname())

    # -- httptools callbacks (no awaiting in here: they only record) ----------------------------

    def on_message_begin(self) -> None:
        self.current = _Request()
        self.head_size = 0
        self.continue_wanted = False

    def on_url(self, url: bytes) -> None:
        self.current.target += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # (httptools gathers a header cut across reads and calls this once it is whole)
        self.current.raw_headers.append((name, value))
        self._grow_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        request = self.current
        parser = self.parser
        request.method = parser.get_method()
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        self.raw = None
        for name, value in request.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.strip().isdigit() and int(value) > self.lane.max_body:
                request.too_large = True
            elif lowered == b"expect" and value.strip().lower() == b"100-continue":
                self.continue_wanted = True

    def on_body(self, body: bytes) -> None:
        request = self.current
        request.body.append(body)
        request.body_size += len(body)
        if request.body_size > self.lane.max_body:
            request.too_large = True

    def on_message_complete(self) -> None:
        self.requests.append(self.current)
        self.current = None

    def _grow_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > self.lane.max_head:
            self.current.head_too_large = True

    # -- the loop ---------------------------------------------------------------------------------

    async def serve(self, data: bytes) -> bytes | None:
        """Serve requests, the first starting with `data`, until the connection ends (None) or
        is to be handed to Hypercorn (the bytes to replay to it)."""
        while True:
            if not data:
                return None
            if self.raw is not None:
                self.raw += data
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                # The parser stopped at the upgrade request (the last parsed): the ones before it
                # are answered first, then Hypercorn takes the connection from its head on.
                target = self.current if self.current is not None else self.requests.pop()
                if not await self._answer_parsed():
                    return None
                return target.head() + data[upgrade.args[0]:]
            except httptools.HttpParserError:
                if self.raw is not None and not self.served:
                    return bytes(self.raw)  # not HTTP/1.x from the start: Hypercorn's to answer
                await self._answer_parsed()
                await self._refuse(400, "Bad request: malformed HTTP")
                return None
            request = self.current
            if request is not None:
                if request.head_too_large or request.too_large:
                    if not await self._answer_parsed():
                        return None
                    if request.head_too_large:
                        await self._refuse(431, "Request header fields too large")
                    else:
                        await self._refuse(413, self.lane.body_too_large)
                    return None
                if self.continue_wanted and request.method is not None:
                    self.continue_wanted = False  # the head is in, the body is awaited
                    await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif self.raw is not None and len(self.raw) > self.lane.max_head:
                return bytes(self.raw)
            if not await self._answer_parsed():
                return None
            if self.current is not None:  # a request under way: no idle timeout
                data = await self.stream.receive_some(MAX_RECV)
            else:
                data = await self.lane.receive_idle(self.stream, self.idle)

    async def _answer_parsed(self) -> bool:
        """Answer the requests parsed so far, in order; False once the connection must close."""
        while self.requests:
            request = self.requests.pop(0)
            if request.head_too_large:
                await self._refuse(431, "Request header fields too large")
                return False
            if request.too_large:
                await self._refuse(413, self.lane.body_too_large)
                return False
            self.served += 1
            close = (not request.keep_alive or self.lane.context.terminated.is_set()
                     or self.served >= self.lane.config.keep_alive_max_requests)
            if not await self._run_app(request, close):
                return False
            if close:
                return False
        return True

    async def _run_app(self, request: _Request, close: bool) -> bool:
        raw_path, _, query = bytes(request.target).partition(b"?")
        try:
            path = unquote(raw_path.decode("ascii"))
        except UnicodeDecodeError:
            await self._refuse(400, "Bad request: the request target is not ASCII")
            return False
        scope = {
            "type": "http", "asgi": {"spec_version": "2.3", "version": "3.0"},
            "http_version": request.http_version, "method": request.method.decode("ascii").upper(),
            "scheme": "http", "path": path, "raw_path": raw_path, "query_string": query,
            "root_path": self.lane.config.root_path,
            "headers": [(name.lower(), value.strip()) for name, value in request.raw_headers],
            "client": self.client, "server": self.server, "state": self.lane.state.copy(), "extensions": {},
        }
        response = AsgiResponse(self.send_all, self.lane.date_header(), head_only=scope["method"] == "HEAD",
                                close=close, chunked_ok=request.http_version == "1.1")
        body = b"".join(request.body)
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            # The body has been read; the app waits here for a disconnect it never needs to act
            # on (the next request is read only after this one is answered).
            await trio.sleep_forever()

        try:
            await self.lane.app(scope, receive, response.send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the client went away while it was answered
        except Exception:  # noqa: BLE001 - the app's own handler missed it; the connection survives the app
            log.exception("unhandled error serving %s %s", scope["method"], path)
            if not response.started:
                await self._refuse(500, "Internal server error")
            return False
        if not response.finished:
            if response.started:
                return False  # a body cut short: the client cannot tell where it ends
            await self._refuse(500, "Internal server error")
            return False
        return not response.close

    async def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await self.stream.send_all(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"date: %s\r\nconnection: close\r\n\r\n%s"
            % (status, REASONS.get(status, b""), len(body), self.lane.date_header(), body))


@attrs.define(eq=False)
class _Request:
    target: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = attrs.Factory(list)
    method: bytes | None = None
    http_version: str = "1.1"
    keep_alive: bool = True
    upgrade: bool = False
    body: list[bytes] = attrs.Factory(list)
    body_size: int = 0
    too_large: bool = False
    head_too_large: bool = False

    def head(self) -> bytes:
        """The request's head as it came (method, target, headers in order), for a hand-over."""
        lines = [b"%s %s HTTP/%s" % (self.method, self.target, self.http_version.encode())]
        lines += [name + b": " + value for name, value in self.raw_headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"


class _HandedOver(TCPServer):
    """Hypercorn's connection server, for a connection whose first bytes were read here: it
    handles them as if it had read them itself, then reads on from the socket (no wrapper
    stream, whose frames an idle phone's socket would hold for hours)."""

    def __init__(self, *args, prefix: bytes) -> None:
        super().__init__(*args)
        self._prefix = prefix

    async def protocol_send(self, event: Event) -> None:
        # The bytes of a frame go out with os.write when no write is under way and the socket
        # takes them (trio's send_all yields after every write: a task switch per frame); the
        # rest, or an error, goes Hypercorn's way, shielded like its own writes.
        if isinstance(event, RawData) and not self.send_lock.locked():
            data = event.data
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except OSError:  # full (BlockingIOError), or gone: Hypercorn's send meets it
                sent = 0
            if sent == len(data):
                return
            with trio.CancelScope(shield=True):  # a frame begun is finished
                await super().protocol_send(RawData(data[sent:]))
            return
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        # Hypercorn's own loop (0.18.0), with the bytes already read handled first. Written out
        # rather than calling it: its frame and the prefix would stay alive under this one.
        event, self._prefix = RawData(self._prefix), b""
        await self.protocol.handle(event)
        del event
        timeout = self.config.read_timeout
        while True:
            try:
                if timeout is None:  # (a node sets none: no cancel scope per read of a phone's frames)
                    data = await self.stream.receive_some(MAX_RECV)
                else:
                    with trio.fail_after(timeout):
                        data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())


def _asks_upgrade(data: bytes) -> bool:
    """Whether `data` starts with a whole request head that has an Upgrade header."""
    head, found, _ = data.partition(b"\r\n\r\n")
    return bool(found) and b"\nupgrade:" in head.lower()


async def _close(stream: trio.SocketStream) -> None:
    """Half-close, then read what the client still sends for a moment (a body refused unread),
    so that it reads our answer before the reset a close over unread bytes would cause."""
    try:
        await stream.send_eof()
        with trio.move_on_after(1.0):
            drained = 0
            while drained < 4 * MAX_RECV * 16 and (data := await stream.receive_some(MAX_RECV)):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
        pass
    await stream.aclose()
