"""A webhook receiver for the tests (a trio + h11 server on 127.0.0.1 that records what it is sent
and answers as told), and the small helpers the webhook tests share."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from functools import partial
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator, Callable

import attrs
import h11
import trio


SECRET = "whsec-0123456789abcdef"


# A receiver that records what it is sent and answers as told.

@attrs.define
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@attrs.define(eq=False)
class Receiver:
    url: str = ""
    status: int = 200
    hang: bool = False  # hold the request without answering
    requests: list[Received] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def nth(self, n: int, timeout: float = 10.0) -> Received:
        """The n-th request (1-based), waiting for it."""
        return await self.first(lambda _: len(self.requests) >= n, timeout, pick=lambda: self.requests[n - 1])

    async def event(self, name: str, timeout: float = 10.0, **fields) -> Received:
        """The first request for event `name` whose body has `fields`, waiting for it."""
        def match(r: Received) -> bool:
            return r.json["event"] == name and all(r.json.get(k) == v for k, v in fields.items())
        return await self.first(match, timeout)

    async def first(self, match: Callable[[Received], bool], timeout: float, pick=None) -> Received:
        with trio.fail_after(timeout):
            while True:
                found = [r for r in self.requests if match(r)]
                if found:
                    return pick() if pick else found[0]
                await self._changed.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next_event(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                body = b""
                while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
                    body += event.data
                self.requests.append(Received(
                    method=request.method.decode(), target=request.target.decode(),
                    headers={k.decode(): v.decode() for k, v in request.headers}, body=body))
                self._changed.set()
                self._changed = trio.Event()
                if self.hang:
                    await trio.sleep_forever()
                await stream.send_all(conn.send(h11.Response(
                    status_code=self.status, headers=[("content-length", "2"), ("content-type", "text/plain")])))
                await stream.send_all(conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return


async def _next_event(conn: h11.Connection, stream: trio.SocketStream):
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1"))
        receiver.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"
        yield receiver
        nursery.cancel_scope.cancel()


# Helpers over the API.

def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def create_hook(server, key: str, url: str, events=("sms_received",), **extra) -> dict:
    r = await server.http.post("/api/v1/webhooks", json={"url": url, "events": list(events), **extra},
                               headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()


async def ping(server, key: str, hook_id: int) -> dict:
    r = await server.http.post(f"/api/v1/webhooks/{hook_id}/test", headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()["delivery"]


async def delivery(server, key: str, hook_id: int, delivery_id: int) -> dict:
    r = await server.http.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=auth(key))
    assert r.status_code == 200, r.text
    return next(d for d in r.json()["deliveries"] if d["id"] == delivery_id)


def attempts_reach(server, delivery_id: int, n: int) -> Callable[[], bool]:
    return lambda: server.sql("SELECT 1 FROM webhook_deliveries WHERE id = %s AND attempts >= %s",
                              (delivery_id, n))


def shift_clock(server, seconds: float) -> None:
    """Move the webhook actor's wall clock forward (backoff without sleeping) and wake it."""
    actor = server.node.webhooks
    actor.now = lambda: datetime.now(timezone.utc) + timedelta(seconds=seconds)
    actor.wake()


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Management API.
