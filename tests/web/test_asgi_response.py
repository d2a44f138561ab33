"""An ASGI response written as HTTP/1.1 bytes: one write when it fits, chunks without a length,
nothing but the head for HEAD, and the connection's own headers written by the server alone."""

import pytest

from web.asgi_response import AsgiResponse

DATE = b"Tue, 01 Dec 2026 20:00:00 GMT"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.writes.append(data)


async def respond(messages: list[dict], **options) -> tuple[list[bytes], AsgiResponse]:
    stream = Recorder()
    options = {"head_only": False, "close": False, "chunked_ok": True, **options}
    response = AsgiResponse(stream.send_all, DATE, **options)
    for message in messages:
        await response.send(message)
    return stream.writes, response


def start(status: int = 200, *headers: tuple[bytes, bytes]) -> dict:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes, more: bool = False) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def test_a_whole_answer_is_one_write():
    writes, response = await respond([start(202, (b"content-type", b"application/json"), (b"content-length", b"2")),
                                      body(b"{}", more=True), body(b"")])
    assert writes == [b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                      b"date: " + DATE + b"\r\n\r\n{}"]
    assert response.finished and not response.close


async def test_without_a_length_the_body_is_chunked():
    writes, _ = await respond([start(200), body(b"abc", more=True), body(b"de", more=True), body(b"")])
    assert writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: " + DATE
                      + b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"]


async def test_an_http_1_0_client_gets_a_body_that_ends_with_the_connection():
    writes, response = await respond([start(200), body(b"abc")], chunked_ok=False)
    assert writes == [b"HTTP/1.1 200 OK\r\ndate: " + DATE + b"\r\nconnection: close\r\n\r\nabc"]
    assert response.close


async def test_head_gets_the_head_alone_with_the_length_the_app_gave():
    writes, _ = await respond([start(200, (b"content-length", b"5")), body(b"hello")], head_only=True)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: " + DATE + b"\r\n\r\n"]


async def test_the_connection_headers_are_the_servers_and_close_is_said():
    writes, _ = await respond([start(200, (b"Connection", b"keep-alive"), (b"Date", b"yesterday"),
                                      (b"Transfer-Encoding", b"gzip"), (b"content-length", b"0")), body(b"")],
                              close=True)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: " + DATE + b"\r\nconnection: close\r\n\r\n"]


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_are_not_chunked(status):
    writes, _ = await respond([start(status), body(b"")])
    assert b"transfer-encoding" not in writes[0] and writes[0].endswith(b"\r\n\r\n")


async def test_a_long_body_is_written_as_it_comes():
    chunk = b"x" * AsgiResponse.FLUSH_AT
    writes, _ = await respond([start(200, (b"content-length", b"%d" % (2 * len(chunk)))),
                               body(chunk, more=True), body(chunk, more=True), body(b"")])
    assert len(writes) == 3 and writes[1] == chunk and writes[2] == b""


async def test_messages_out_of_turn_are_ignored():
    writes, response = await respond([body(b"too early"), start(200, (b"content-length", b"2")), start(500),
                                      body(b"ok"), body(b"after the end")])
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: " + DATE + b"\r\n\r\nok"]
    assert response.finished


async def _socket_pair():
    import socket

    import trio

    a, b = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(trio.socket.from_stdlib_socket(b))


async def test_send_all_now_writes_everything_in_order_even_past_the_socket_buffer():
    import trio

    from web.asgi_response import send_all_now

    ours, theirs = await _socket_pair()
    data = bytes(range(256)) * 40_000  # 10 MB: far more than the socket takes at once
    got = bytearray()

    async def read():
        while len(got) < 5 + len(data):
            got.extend(await theirs.receive_some(1 << 16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await send_all_now(ours, b"head ")
        await send_all_now(ours, data[:len(data) - 5])
        await send_all_now(ours, data[len(data) - 5:])
    assert bytes(got) == b"head " + data


async def test_send_all_now_raises_trio_errors_for_a_gone_peer_or_a_closed_socket():
    import trio

    from web.asgi_response import send_all_now

    ours, theirs = await _socket_pair()
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(3):  # the first write may still be taken
            await send_all_now(ours, b"x" * 1000)
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await send_all_now(ours, b"x")
