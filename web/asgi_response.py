"""An ASGI app's response (`http.response.start`, `http.response.body`) written as HTTP/1.1.

The head and the body go out in one socket write when the body fits in FLUSH_AT (a REST
answer always does); a longer body is written as it comes. Without a `content-length` from
the app the body is chunked, or, for an HTTP/1.0 client, ends with the connection. A HEAD
request gets the head alone. The connection's own headers (`connection`, `transfer-encoding`,
`date`) are the server's to write.
"""

from __future__ import annotations

import errno
import http
import os
from typing import Awaitable, Callable

import trio

__all__ = ["AsgiResponse", "REASONS", "send_all_now"]

REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


class AsgiResponse:
    """The ASGI `send` of one request: the head and body are written together when they fit."""

    FLUSH_AT = 64 * 1024

    def __init__(self, write: Callable[[bytes], Awaitable[None]], date: bytes, *, head_only: bool,
                 close: bool, chunked_ok: bool) -> None:
        self.write = write  # the connection's: all of the bytes, in order
        self.date = date
        self.head_only = head_only
        self.close = close  # the connection closes after this response
        self.chunked_ok = chunked_ok
        self.started = False   # the head was given by the app
        self.finished = False
        self.chunked = False
        self.pending: list[bytes] = []
        self.pending_size = 0

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            self._head(message["status"], message.get("headers", ()))
        elif kind == "http.response.body" and self.started and not self.finished:
            body = bytes(message.get("body", b""))
            more = message.get("more_body", False)
            if not self.head_only and body:
                self.pending.append(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)
                self.pending_size += len(body)
            if not more:
                self.finished = True
                if self.chunked and not self.head_only:
                    self.pending.append(b"0\r\n\r\n")
            if not more or self.pending_size >= self.FLUSH_AT:
                await self._flush()

    def _head(self, status: int, headers) -> None:
        lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b""))]
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
            elif lowered in (b"connection", b"transfer-encoding", b"date"):
                continue  # the connection's own business
            lines.append(name + b": " + value)
        if not has_length and status >= 200 and status not in (204, 304):
            if self.chunked_ok:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked")
            else:  # an HTTP/1.0 client: the body ends where the connection does
                self.close = True
        lines.append(b"date: " + self.date)
        if self.close:
            lines.append(b"connection: close")
        self.pending.append(b"\r\n".join(lines) + b"\r\n\r\n")

    async def _flush(self) -> None:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_size = 0
        await self.write(data)


async def send_all_now(stream: trio.SocketStream, data: bytes) -> None:
    """`stream.send_all(data)`, but what the socket takes at once is written without a trip
    through the scheduler (trio yields after every write, a task switch per response); the
    rest goes the usual way. For a stream one task writes to."""
    try:
        sent = os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise trio.ClosedResourceError("the socket was closed") from exc
        raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
    if sent < len(data):
        await stream.send_all(memoryview(data)[sent:])
