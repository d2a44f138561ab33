"""The `/cable` WebSocket straight on ASGI: text frames in and out, without Quart's layer.

Every phone holds one of these for hours, and every message crosses it three times (a
`send_sms` out, `sent` and `delivered` in). Quart's websocket adds, per connection, a request
context, a queue and a task that moves each frame from the server's queue into its own; here
a frame is read from Hypercorn's queue by the connection itself. `web/app.py` routes the
WebSocket scope of `/cable` here and everything else to Quart.
"""

from __future__ import annotations

from typing import Awaitable, Callable
from urllib.parse import parse_qs

import attrs
import trio
from hypercorn.protocol.events import Data, Event
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import ConnectionState

from web.ws_frames import FrameReader, text_frame

__all__ = ["AsgiSocket", "RECEIVE_MANY"]

# The event our reader puts on Hypercorn's queue: every whole frame of one read at once.
RECEIVE_MANY = "smsgw.websocket.receive_many"


@attrs.define(eq=False)
class AsgiSocket:
    scope: dict
    _receive: Callable[[], Awaitable[dict]]
    _send: Callable[[dict], Awaitable[None]]
    connected: bool = True   # False once the client went away (or never completed the handshake)
    _closed: bool = False    # our close was sent
    _held: list = attrs.Factory(list)  # frames received and not yet returned by receive_many
    # Hypercorn's stream behind `send` (its bound `app_send`), for `send_many`; None elsewhere.
    _stream: WSStream | None = attrs.field(init=False)
    # Hypercorn's queue behind `receive` (its bound `MemoryReceiveChannel.receive`), for
    # `receive_many`; None elsewhere.
    _queue: trio.MemoryReceiveChannel | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        stream = getattr(self._send, "__self__", None)
        self._stream = stream if isinstance(stream, WSStream) else None
        queue = getattr(self._receive, "__self__", None)
        self._queue = queue if isinstance(queue, trio.MemoryReceiveChannel) else None

    def query(self, name: str) -> str | None:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.scope.get("headers", ()):
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def requested_subprotocols(self) -> list[str]:
        return list(self.scope.get("subprotocols", ()))

    async def accept(self, subprotocol: str | None) -> bool:
        """Complete the handshake; False if the client left before it."""
        event = await self._receive()
        if event["type"] != "websocket.connect":
            self.connected = False
            return False
        if self._stream is not None:
            # No permessage-deflate, as Rails' Action Cable server never offers it either.
            # Hypercorn would accept it from any client that asks (browsers, `ws`, OkHttp), and
            # each such socket then keeps zlib state of its own: an idle phone took 137 KB
            # instead of 40 KB, to compress frames of a few hundred bytes.
            self._stream.handshake.extensions = None
            # Before the accept: the first frame may follow the 101 at once.
            _read_frames_fast(self._stream)
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol})
        return True

    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the client is gone."""
        frames = await self.receive_many(1)
        return frames[0] if frames else None

    async def receive_many(self, limit: int = 64) -> list[str | bytes] | None:
        """The next frame and those already received behind it (up to `limit`), or None once
        the client is gone. A phone writes frames in bursts (a report for each message it
        sent); taking the burst at once saves a wait on the queue per frame."""
        while not self._held:
            if not self.connected:
                return None
            self._take(await self._receive())
        if self._queue is not None:
            while len(self._held) < limit and self.connected:
                try:
                    event = self._queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                self._take(event)
        frames = self._held[:limit]
        del self._held[:limit]
        return frames

    def _take(self, event: dict) -> None:
        kind = event["type"]
        if kind == RECEIVE_MANY:
            self._held.extend(event["frames"])
        elif kind == "websocket.receive":
            text = event.get("text")
            self._held.append(text if text is not None else event.get("bytes", b""))
        else:  # websocket.disconnect
            self.connected = False

    async def send(self, text: str) -> None:
        if self.connected and not self._closed:
            await self._send({"type": "websocket.send", "text": text})

    async def send_many(self, texts: list[str]) -> None:
        """Several frames with one socket write where the server allows it (Hypercorn's
        `WSStream`, the pinned version: the frames are framed here, as wsproto would frame
        them, and written as one `Data` event, as Hypercorn does for each frame); otherwise
        one at a time."""
        stream = self._stream
        if stream is None:
            for text in texts:
                await self.send(text)
            return
        if (self._closed or stream.closed or stream.state != ASGIWebsocketState.CONNECTED
                or stream.connection.state != ConnectionState.OPEN):
            return  # closing: Hypercorn drops frames sent after close the same way
        await stream.send(Data(stream_id=stream.stream_id, data=b"".join([text_frame(text) for text in texts])))

    async def close(self, code: int = 1000) -> None:
        """Close once; a no-op when already closed or the client is gone."""
        if self._closed:
            return
        self._closed = True
        if self.connected:
            await self._send({"type": "websocket.close", "code": code})


def _read_frames_fast(stream: WSStream) -> None:
    """Route the bytes a client sends through a `FrameReader` (web/ws_frames.py) in front of
    Hypercorn's wsproto path: the whole text and binary frames of one read reach the
    application as one RECEIVE_MANY event on Hypercorn's queue, instead of one event (and one
    wait on the queue) per frame. From the first frame the reader does not take (close, ping, a
    fragment, a bad frame) every byte goes to Hypercorn's own `handle`, as if the reader had
    never been there; the hand-over is at a frame boundary, where wsproto starts afresh.

    Reaches into the pinned Hypercorn's `WSStream` (its `handle`, `app_put`, `handshake`), as
    `send_many` does; tests/web/test_cable_frames.py holds it to wsproto's behaviour.
    """
    reader = FrameReader()
    full_handle = stream.handle

    async def handle(event: Event) -> None:
        if (isinstance(event, Data) and not reader.handed_over and not stream.closed
                and stream.handshake.accepted):
            frames, rest = reader.feed(event.data)
            if frames:
                await stream.app_put({"type": RECEIVE_MANY, "frames": frames})
            if not rest:  # the reader keeps the stream, or handed over at the end of this read
                return
            event = Data(stream_id=event.stream_id, data=rest)
        await full_handle(event)

    stream.handle = handle  # an instance attribute: H11Protocol calls `self.stream.handle(event)`
