"""WebSocket frames (RFC 6455) for the `/cable` hot path, as sans-IO code.

A phone's socket carries hundreds of small, whole, masked text frames a second (two reports per
message) and the server writes as many `send_sms` frames back. wsproto, under Hypercorn, spends
about 25 µs of pure Python on each inbound frame and then the server hands every frame to the
application through a channel of its own. `FrameReader` does only the common case, fast: whole
(FIN) text or binary frames, masked, without reserved bits, up to `FAST_PAYLOAD_LIMIT`. At the
first frame of any other kind (close, ping, pong, a fragment, a protocol error, invalid UTF-8,
a large frame) it stops and hands the bytes from that frame on to the full implementation, for
good, so that every rare case keeps wsproto's exact behaviour. The hand-over is always at a frame
boundary, where a fresh wsproto decoder can start.
"""

from __future__ import annotations

__all__ = ["FAST_PAYLOAD_LIMIT", "FrameReader", "text_frame"]

FAST_PAYLOAD_LIMIT = 64 * 1024  # larger frames are streamed by the full implementation

_TEXT = 0x81    # FIN + opcode 1
_BINARY = 0x82  # FIN + opcode 2
_MASKED = 0x80


class FrameReader:
    """Turns a client's bytes into whole messages until the first frame it leaves to others.

    `feed(data)` returns `(messages, rest)`: the text (`str`) and binary (`bytes`) messages
    completed so far, in order, and `None` while this reader keeps the stream; or, once it
    hands over, the bytes from the first frame it does not take (possibly empty) as `rest`.
    After a hand-over it must not be fed again. An incomplete frame is kept for the next feed
    (at most FAST_PAYLOAD_LIMIT plus a header: a longer frame is handed over, not buffered).
    """

    __slots__ = ("_pending", "handed_over")

    def __init__(self) -> None:
        self._pending = b""
        self.handed_over = False

    def feed(self, data: bytes) -> tuple[list[str | bytes], bytes | None]:
        if self.handed_over:
            raise RuntimeError("FrameReader fed after its hand-over")
        buf = self._pending + data if self._pending else bytes(data)
        size = len(buf)
        messages: list[str | bytes] = []
        at = 0
        while size - at >= 2:
            first, second = buf[at], buf[at + 1]
            if (first != _TEXT and first != _BINARY) or not second & _MASKED:
                return self._hand_over(messages, buf, at)
            length = second & 0x7F
            head = at + 2
            if length == 126:
                if size - at < 4:
                    break
                length = (buf[head] << 8) | buf[head + 1]
                if length < 126:  # not the shortest encoding: a protocol error, wsproto's to report
                    return self._hand_over(messages, buf, at)
                head += 2
            elif length == 127:  # 64 KiB or more
                return self._hand_over(messages, buf, at)
            if length > FAST_PAYLOAD_LIMIT:
                return self._hand_over(messages, buf, at)
            end = head + 4 + length
            if end > size:
                break
            payload = _unmask(buf[head:head + 4], buf[head + 4:end], length)
            if first == _TEXT:
                try:
                    messages.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    return self._hand_over(messages, buf, at)
            else:
                messages.append(payload)
            at = end
        self._pending = buf[at:] if at < size else b""
        return messages, None

    def _hand_over(self, messages: list[str | bytes], buf: bytes, at: int) -> tuple[list[str | bytes], bytes]:
        self.handed_over = True
        self._pending = b""
        return messages, buf[at:]


def _unmask(mask: bytes, payload: bytes, length: int) -> bytes:
    if not length:
        return b""
    # XOR as one big integer: C speed, where a loop over bytes would be pure Python.
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


def text_frame(text: str) -> bytes:
    """One whole, unmasked text frame (the server's side of RFC 6455)."""
    payload = text.encode("utf-8")
    length = len(payload)
    if length < 126:
        return bytes((_TEXT, length)) + payload
    if length < 65536:
        return bytes((_TEXT, 126, length >> 8, length & 0xFF)) + payload
    return bytes((_TEXT, 127)) + length.to_bytes(8, "big") + payload
