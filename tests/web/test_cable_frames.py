"""`/cable` framing over a real socket, byte by byte: frames cut across TCP reads, bursts of
frames in one read, and the frames the fast reader leaves to wsproto (ping, close, bad UTF-8)."""

import json
import struct

import trio
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.conftest import identifier_for, wait_for
from tests.web.test_ws_frames import frame


class RawPhone:
    """A WebSocket client that writes frames as bytes, as cut as the test likes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = FrameProtocol(client=True, extensions=[])
        self.received = []

    @classmethod
    async def connect(cls, server, key: str) -> "RawPhone":
        host, port = server.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            f"GET /cable?api_key={key} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: actioncable-v1-json\r\n\r\n".encode())
        phone, head = cls(stream), b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        phone.frames.receive_bytes(rest)
        assert await phone.next() == (Opcode.TEXT, {"type": "welcome"})
        return phone

    async def next(self, timeout: float = 5.0, *, skip_pings: bool = True):
        """The next frame from the server: (opcode, JSON for text, payload otherwise); None at EOF."""
        with trio.fail_after(timeout):
            while True:
                for f in self.frames.received_frames():
                    if f.opcode is Opcode.TEXT:
                        body = json.loads(f.payload)
                        if skip_pings and body.get("type") == "ping":
                            continue
                        return f.opcode, body
                    if f.opcode is Opcode.CLOSE:
                        return f.opcode, f.payload  # (code, reason)
                    return f.opcode, bytes(f.payload)
                data = await self.stream.receive_some()
                if not data:
                    return None
                self.frames.receive_bytes(data)


def subscribe(key: str) -> bytes:
    return frame(json.dumps({"command": "subscribe", "identifier": identifier_for(key)}).encode())


def action(key: str, **data) -> bytes:
    return frame(json.dumps({"command": "message", "identifier": identifier_for(key),
                             "data": json.dumps(data)}).encode())


async def test_frames_cut_across_reads_and_bursts_in_one_read_are_all_read(server):
    key = await server.register("dev-frames")
    phone = await RawPhone.connect(server, key)
    data = subscribe(key)
    for piece in (data[:1], data[1:5], data[5:40], data[40:]):  # the header itself cut in two
        await phone.stream.send_all(piece)
        await trio.sleep(0.02)
    confirmed = (Opcode.TEXT, {"identifier": identifier_for(key), "type": "confirm_subscription"})
    assert await phone.next() == confirmed
    # A burst: three frames and half of a fourth in one write, the rest in the next.
    burst = subscribe(key) * 3 + subscribe(key)
    await phone.stream.send_all(burst[:-7])
    await trio.sleep(0.02)
    await phone.stream.send_all(burst[-7:])
    for _ in range(4):
        assert await phone.next() == confirmed
    await phone.stream.send_all(action(key, action="heartbeat", battery_level=77, signal_strength=3))
    await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE device_id = 'dev-frames' AND battery_level = 77"))


async def test_ping_is_answered_and_text_frames_after_it_still_work(server):
    key = await server.register("dev-ping")
    phone = await RawPhone.connect(server, key)
    await phone.stream.send_all(subscribe(key) + frame(b"are you there", opcode=9) + subscribe(key))
    confirmed = (Opcode.TEXT, {"identifier": identifier_for(key), "type": "confirm_subscription"})
    # The pong is written by the server at once, the confirmations by the phone's actor.
    got = [await phone.next() for _ in range(3)]
    assert sorted(got, key=repr) == sorted([confirmed, confirmed, (Opcode.PONG, b"are you there")], key=repr)
    # Handed over to wsproto for good: fragments are read too.
    whole = json.dumps({"command": "subscribe", "identifier": identifier_for(key)}).encode()
    await phone.stream.send_all(frame(whole[:10], fin=False) + frame(whole[10:], opcode=0))
    assert await phone.next() == confirmed


async def test_close_from_the_phone_is_answered_and_the_socket_ends(server):
    key = await server.register("dev-close")
    phone = await RawPhone.connect(server, key)
    await phone.stream.send_all(subscribe(key))
    await phone.next()
    await phone.stream.send_all(frame(struct.pack("!H", 1000) + b"bye", opcode=8))
    opcode, payload = await phone.next()
    assert opcode is Opcode.CLOSE and payload[0] == 1000
    assert await phone.next() is None
    await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE device_id = 'dev-close' AND status = 'offline'"))


async def test_a_text_frame_that_is_not_utf8_ends_the_connection(server):
    """wsproto's verdict (Hypercorn then closes the TCP connection without a close frame),
    whether or not the fast reader saw the frame first."""
    key = await server.register("dev-utf8")
    phone = await RawPhone.connect(server, key)
    await phone.stream.send_all(subscribe(key))
    assert (await phone.next())[1]["type"] == "confirm_subscription"
    await phone.stream.send_all(frame(b"\xff\xfe not text") + subscribe(key))
    assert await phone.next() is None
    await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE device_id = 'dev-utf8' AND status = 'offline'"))
