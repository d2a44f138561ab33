"""The ASGI socket under `/cable`: frames read in bursts from the server's queue."""

import trio
import trio.testing

from web.cable_socket import RECEIVE_MANY, AsgiSocket


def _socket(queue_size: int = 16):
    send_events, receive_events = trio.open_memory_channel(queue_size)

    async def send(message: dict) -> None:
        pass

    return AsgiSocket({"type": "websocket"}, receive_events.receive, send), send_events


async def test_receive_many_takes_what_is_queued_and_ends_at_disconnect():
    socket, events = _socket()
    for text in ("one", "two"):
        events.send_nowait({"type": "websocket.receive", "text": text})
    events.send_nowait({"type": "websocket.receive", "bytes": b"\x00three"})
    events.send_nowait({"type": "websocket.disconnect", "code": 1000})
    events.send_nowait({"type": "websocket.receive", "text": "after the end"})
    assert await socket.receive_many() == ["one", "two", b"\x00three"]
    assert not socket.connected
    assert await socket.receive_many() is None


async def test_receive_many_waits_for_the_first_frame_and_keeps_to_its_limit():
    socket, events = _socket()
    async with trio.open_nursery() as nursery:
        got = []

        async def reader():
            got.append(await socket.receive_many(limit=2))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing queued: it waits
        for text in ("a", "b", "c"):
            events.send_nowait({"type": "websocket.receive", "text": text})
    assert got == [["a", "b"]]
    assert await socket.receive_many() == ["c"]


async def test_receive_many_without_a_queue_reads_one_frame_at_a_time():
    queued = [{"type": "websocket.receive", "text": "x"}, {"type": "websocket.receive", "text": "y"}]

    async def receive() -> dict:  # a plain callable, not Hypercorn's channel
        return queued.pop(0)

    async def send(message: dict) -> None:
        pass

    socket = AsgiSocket({"type": "websocket"}, receive, send)
    assert await socket.receive_many() == ["x"]
    assert await socket.receive_many() == ["y"]


async def test_frames_of_one_read_come_as_one_event_and_keep_their_order_past_the_limit():
    socket, events = _socket()
    events.send_nowait({"type": RECEIVE_MANY, "frames": ["a", "b", "c"]})
    events.send_nowait({"type": "websocket.receive", "text": "d"})
    events.send_nowait({"type": RECEIVE_MANY, "frames": ["e", b"f"]})
    events.send_nowait({"type": "websocket.disconnect", "code": 1000})
    assert await socket.receive_many(limit=2) == ["a", "b"]
    assert await socket.receive() == "c"
    assert await socket.receive_many(limit=10) == ["d", "e", b"f"]
    assert await socket.receive_many() is None
