"""The fast lane (web/fast_lane.py) over raw sockets: keep-alive, pipelining, cut requests,
chunked bodies, 100-continue, limits, HTTP/1.0, HEAD, and the hand-over to Hypercorn for
WebSockets and for bytes that are not HTTP/1.x."""

import json
import random

import pytest
import trio

from tests.conftest import clean, running_node
from web import cable_protocol as cable


class RawHttp:
    """A client that writes bytes as the test cuts them and reads responses one by one."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    @classmethod
    async def connect(cls, server) -> "RawHttp":
        host, port = server.url.removeprefix("http://").split(":")
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def _more(self) -> None:
        data = await self.stream.receive_some()
        if not data:
            self.eof = True
        self.buffer += data

    async def response(self, timeout: float = 5.0, *, head_only: bool = False) -> tuple[int, dict, bytes] | None:
        """The next response (status, headers with lower-case names, body); None at EOF."""
        with trio.fail_after(timeout):
            while b"\r\n\r\n" not in self.buffer:
                if self.eof:
                    return None
                await self._more()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if head_only or status < 200 or status in (204, 304):
                return status, headers, b""
            if "content-length" in headers:
                size = int(headers["content-length"])
                while len(self.buffer) < size:
                    await self._more()
                body, self.buffer = self.buffer[:size], self.buffer[size:]
                return status, headers, body
            assert headers.get("transfer-encoding") == "chunked", headers
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    await self._more()
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line, 16)
                while len(self.buffer) < size + 2:
                    await self._more()
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2:]
                if size == 0:
                    return status, headers, body

    async def closed(self, timeout: float = 5.0) -> bool:
        with trio.fail_after(timeout):
            while not self.eof:
                await self._more()
        return True


def post(path: str, body: bytes, key: str, *extra: str, length: bool = True) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {key}", "Content-Type: application/json"]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head + list(extra)) + "\r\n\r\n").encode() + body


SEND = json.dumps({"to": "+14155552671", "message": "hello"}).encode()


async def test_keep_alive_requests_are_answered_on_one_connection(server):
    key = server.client_key("sms")
    http = await RawHttp.connect(server)
    for _ in range(3):
        await http.stream.send_all(post("/api/v1/sms/send", SEND, key))
        status, headers, body = await http.response()
        assert status == 202 and json.loads(body)["status"] == "queued"
        assert headers["content-type"] == "application/json" and "date" in headers
        assert "connection" not in headers
    assert len(server.sql("SELECT 1 FROM messages")) == 3


async def test_pipelined_requests_are_answered_in_order(server):
    key = server.client_key("sms")
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"GET /up HTTP/1.1\r\nHost: t\r\n\r\n" + post("/api/v1/sms/send", SEND, key)
                               + b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
    answers = [await http.response() for _ in range(3)]
    assert [a[0] for a in answers] == [200, 202, 404]
    assert json.loads(answers[2][2]) == {"error": "Not found"}


async def test_a_request_cut_anywhere_is_read_whole(server):
    key = server.client_key("sms")
    data = post("/api/v1/sms/send", SEND, key)
    http = await RawHttp.connect(server)
    for at in range(0, len(data), 7):  # head and body in pieces of 7 bytes
        await http.stream.send_all(data[at:at + 7])
        await trio.sleep(0.001)
    assert (await http.response())[0] == 202


async def test_a_chunked_body_is_read(server):
    key = server.client_key("sms")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (SEND[:10], SEND[10:])) + b"0\r\n\r\n"
    http = await RawHttp.connect(server)
    await http.stream.send_all(post("/api/v1/sms/send", chunks, key, "Transfer-Encoding: chunked", length=False))
    status, _, body = await http.response()
    assert status == 202, body


async def test_expect_100_continue_is_answered_before_the_body(server):
    key = server.client_key("sms")
    data = post("/api/v1/sms/send", SEND, key, "Expect: 100-continue")
    head, _, body = data.partition(b"\r\n\r\n")
    http = await RawHttp.connect(server)
    await http.stream.send_all(head + b"\r\n\r\n")
    assert (await http.response())[0] == 100
    await http.stream.send_all(body)
    assert (await http.response())[0] == 202


async def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    key = server.client_key("sms")
    http = await RawHttp.connect(server)
    await http.stream.send_all(post("/api/v1/sms/send_bulk", b"", key, length=False)[:-2]
                               + b"Content-Length: 2000000\r\n\r\n" + b"x" * 1000)
    status, headers, body = await http.response()
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body) == {"error": "Request body too large (limit 1024 KiB)"}
    assert await http.closed()


async def test_a_chunked_body_over_the_limit_is_refused(server):
    key = server.client_key("sms")
    http = await RawHttp.connect(server)
    await http.stream.send_all(post("/api/v1/sms/send_bulk", b"", key, "Transfer-Encoding: chunked", length=False))
    piece = b"%x\r\n%s\r\n" % (60_000, b"y" * 60_000)
    with trio.move_on_after(5):
        try:
            for _ in range(20):  # 1.2 MB
                await http.stream.send_all(piece)
        except trio.BrokenResourceError:
            pass
    status, _, body = await http.response()
    assert status == 413 and "too large" in json.loads(body)["error"]


@pytest.mark.parametrize("bad, status, error", [
    (b"GET /up HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431, "Request header fields too large"),
    (b"GET /up HTTP/9\x00\r\n\r\n", 400, "Bad request: malformed HTTP"),
    # llhttp refuses the raw byte itself (the lane also refuses a target it cannot decode)
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "Bad request: malformed HTTP"),
], ids=["head over 16 KiB", "malformed", "non-ASCII target"])
async def test_a_bad_request_after_a_good_one_is_refused_and_the_connection_closed(server, bad, status, error):
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"GET /up HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await http.response())[0] == 200
    await http.stream.send_all(bad)
    answer, headers, body = await http.response()
    assert answer == status and headers["connection"] == "close"
    assert json.loads(body) == {"error": error}
    assert await http.closed()


async def test_http_1_0_is_answered_and_closed(server):
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"GET /up HTTP/1.0\r\n\r\n")
    status, headers, body = await http.response()
    assert status == 200 and json.loads(body)["status"] == "ok" and headers["connection"] == "close"
    assert await http.closed()


async def test_connection_close_is_honoured(server):
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, headers, _ = await http.response()
    assert status == 200 and headers["connection"] == "close"
    assert await http.closed()


async def test_head_gets_the_headers_without_the_body(server):
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"HEAD /up HTTP/1.1\r\nHost: t\r\n\r\nGET /up HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await http.response(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    # The next response starts right after the head: no body was written for HEAD.
    status, _, body = await http.response()
    assert status == 200 and json.loads(body)["status"] == "ok"


async def test_bytes_that_are_not_http_from_the_start_go_to_hypercorn(server):
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"\x16\x03\x01 not a request at all\r\n\r\n")
    status, _, _ = await http.response()
    assert status == 400  # Hypercorn's h11 answer, as before the fast lane
    assert await http.closed()


async def test_a_websocket_after_a_plain_request_on_one_connection_is_handed_over(server):
    gw_key = await server.register("lane-phone")
    http = await RawHttp.connect(server)
    upgrade = (f"GET /cable?api_key={gw_key} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: {cable.SUBPROTOCOL}\r\n\r\n").encode()
    await http.stream.send_all(b"GET /up HTTP/1.1\r\nHost: t\r\n\r\n" + upgrade)
    assert (await http.response())[0] == 200
    status, headers, _ = await http.response()
    assert status == 101 and headers["sec-websocket-protocol"] == cable.SUBPROTOCOL
    with trio.fail_after(5):
        while b"welcome" not in http.buffer:
            await http._more()
    assert http.buffer.startswith(b"\x81") and json.loads(http.buffer[2:]) == {"type": "welcome"}


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server):
    http = await RawHttp.connect(server)
    await http.stream.send_all(b"GET /up HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await http.response())[0] == 200
    with trio.fail_after(8):  # Hypercorn's keep_alive_timeout: 5 s
        assert await http.closed(timeout=8)


@pytest.mark.parametrize("http_server", ["fast", "hypercorn"])
async def test_both_servers_answer_the_same(database_url, http_server):
    clean(database_url)
    async with running_node(database_url, HTTP_SERVER=http_server) as node:
        key = node.client_key("sms")
        r = await node.http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": "hi"},
                                 headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202 and r.json()["status"] == "queued"
        r = await node.http.post("/api/v1/sms/send", content=b"{not json", headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()


async def test_random_bytes_and_mangled_requests_never_break_the_server(server):
    """Whatever a client sends, the server answers it (or closes that connection) and keeps
    serving everyone else: no 500, no crash of the listener."""  # (the fast lane and Hypercorn)
    key = server.client_key("sms")
    rand = random.Random(20261201)
    valid = [post("/api/v1/sms/send", SEND, key), b"GET /up HTTP/1.1\r\nHost: t\r\n\r\n",
             post("/api/v1/sms/send", SEND, key, "Expect: 100-continue"),
             b"GET /cable HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
             b"POST /api/v1/sms/send HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]

    def mangle(data: bytes) -> bytes:
        data = bytearray(data)
        for _ in range(rand.randint(1, 4)):
            kind = rand.random()
            at = rand.randrange(len(data) + 1)
            if kind < 0.3:
                data[at:at] = bytes(rand.randrange(256) for _ in range(rand.randint(1, 8)))
            elif kind < 0.6 and data:
                del data[at:at + rand.randint(1, 8)]
            elif data:
                data[min(at, len(data) - 1)] = rand.randrange(256)
        return bytes(data)

    async def one(payload: bytes) -> None:
        http = await RawHttp.connect(server)
        async with http.stream:
            for at in range(0, len(payload), rand.randint(1, 64)):
                try:
                    await http.stream.send_all(payload[at:at + 64])
                except trio.BrokenResourceError:
                    break
            with trio.move_on_after(1.5):
                try:
                    while (answer := await http.response()) is not None:
                        # 501 and 505 are the right words for a transfer coding or an HTTP
                        # version the server does not implement (RFC 9112), not failures.
                        assert answer[0] < 500 or answer[0] in (501, 505), (payload, answer)
                except (trio.BrokenResourceError, ValueError, IndexError, AssertionError) as exc:
                    if isinstance(exc, AssertionError):
                        raise

    payloads = [mangle(rand.choice(valid) * rand.randint(1, 3)) for _ in range(150)]
    payloads += [bytes(rand.randrange(256) for _ in range(rand.randint(1, 300))) for _ in range(50)]
    async with trio.open_nursery() as nursery:
        for payload in payloads:
            nursery.start_soon(one, payload)
            await trio.sleep(0.002)
    r = await server.http.get("/up")
    assert r.status_code == 200
    r = await server.http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": "still here"},
                               headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202


async def test_a_handed_over_connection_writes_each_frame_whole_and_in_order_past_a_full_socket():
    """`_HandedOver.protocol_send`: os.write while no write is under way, Hypercorn's locked
    send_all for the rest. Two writers at once, payloads far larger than the socket takes, a
    reader that keeps pausing: every payload arrives whole, each writer's in order."""
    import socket

    from hypercorn.config import Config
    from hypercorn.events import RawData
    from hypercorn.trio.worker_context import WorkerContext

    from web.fast_lane import _HandedOver

    a, b = socket.socketpair()
    ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    theirs = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    server = _HandedOver(None, Config(), WorkerContext(None), {}, ours, prefix=b"")
    payloads = {w: [bytes([65 + w]) * random.choice((10, 3_000, 400_000)) + b"|" for _ in range(30)] for w in (0, 1)}
    expected = sum(len(p) for ps in payloads.values() for p in ps)
    got = bytearray()

    async def writer(w):
        for payload in payloads[w]:
            await server.protocol_send(RawData(data=payload))
            await trio.sleep(0)

    async def reader():
        while len(got) < expected:
            got.extend(await theirs.receive_some(random.choice((1_000, 65_536))))
            if random.random() < 0.1:
                await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(writer, 0)
        nursery.start_soon(writer, 1)
    pieces = bytes(got).split(b"|")[:-1]
    for w in (0, 1):
        mine = [p + b"|" for p in pieces if p[:1] == bytes([65 + w])]
        assert mine == payloads[w]
    assert all(len(set(p)) == 1 for p in pieces)  # no payload interleaved with another
