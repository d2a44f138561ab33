"""The benchmark's HTTP senders: single sends (paced or flat out) and bulk sends from many
keep-alive connections, with a poster light enough not to take the CPU it measures."""

from __future__ import annotations

import collections
import json
import time

import attrs
import trio

__all__ = ["JsonPoster", "Sent", "send_messages"]


@attrs.define
class Sent:
    accepted: dict[str, float] = attrs.Factory(dict)  # message_id -> time.monotonic() of the 202
    errors: collections.Counter = attrs.Factory(collections.Counter)
    elapsed: float = 0.0


async def send_messages(url: str, key: str, count: int, *, concurrency: int, rate: float | None,
                        bulk: int = 0) -> Sent:
    """POST /api/v1/sms/send `count` times from `concurrency` workers, paced at `rate`/s if given;
    with `bulk`, POST /api/v1/sms/send_bulk with `bulk` entries a request instead."""
    if bulk:
        return await _send_bulk(url, key, count, concurrency=concurrency, per_request=bulk)
    sent = Sent()
    send, receive = trio.open_memory_channel(concurrency)
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def worker(tickets: trio.MemoryReceiveChannel) -> None:
        http = JsonPoster(host, int(port), key)
        async with tickets:
            async for i in tickets:
                body = json.dumps({"to": f"+1415555{i % 10_000:04d}", "message": f"bench message {i}"})
                try:
                    status, answer = await http.post("/api/v1/sms/send", body.encode())
                except (OSError, trio.BrokenResourceError, ValueError) as exc:
                    sent.errors[type(exc).__name__] += 1
                    await http.close()
                    continue
                if status == 202:
                    sent.accepted[json.loads(answer)["message_id"]] = time.monotonic()
                else:
                    sent.errors[str(status)] += 1
        await http.close()

    started = time.monotonic()
    with trio.fail_after(max(120.0, count / 20)):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, receive.clone())
            receive.close()
            async with send:
                for i in range(count):
                    if rate:
                        await trio.sleep(max(0.0, started + i / rate - time.monotonic()))
                    await send.send(i)
    sent.elapsed = (max(sent.accepted.values()) if sent.accepted else time.monotonic()) - started
    return sent


async def _send_bulk(url: str, key: str, count: int, *, concurrency: int, per_request: int) -> Sent:
    """`count` messages through POST /api/v1/sms/send_bulk, `per_request` entries a request."""
    sent = Sent()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    starts = iter(range(0, count, per_request))

    async def worker() -> None:
        http = JsonPoster(host, int(port), key)
        for first in starts:
            entries = [{"to": f"+1415555{i % 10_000:04d}", "message": f"bench message {i}"}
                       for i in range(first, min(count, first + per_request))]
            try:
                status, answer = await http.post("/api/v1/sms/send_bulk", json.dumps({"messages": entries}).encode())
            except (OSError, trio.BrokenResourceError, ValueError) as exc:
                sent.errors[type(exc).__name__] += len(entries)
                await http.close()
                continue
            if status != 202:
                sent.errors[str(status)] += len(entries)
                continue
            now = time.monotonic()
            for result in json.loads(answer)["results"]:
                if "message_id" in result:
                    sent.accepted[result["message_id"]] = now
                else:
                    sent.errors["refused entry"] += 1
        await http.close()

    started = time.monotonic()
    with trio.fail_after(max(120.0, count / 20)):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    sent.elapsed = (max(sent.accepted.values()) if sent.accepted else time.monotonic()) - started
    return sent


@attrs.define
class JsonPoster:
    """One keep-alive HTTP/1.1 connection that POSTs JSON. The load generator shares 2 cores
    with the server: httpx costs ~3 ms of CPU per request here (its pool alone is O(connections)
    per request), this about a tenth of that."""

    host: str
    port: int
    key: str
    stream: trio.SocketStream | None = None
    buffer: bytes = b""

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send one request, return (status, body); reconnects when the server closed."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.buffer = b""
        await self.stream.send_all(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            await self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").lower().split("\r\n")
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int(fields.get("content-length", "missing"))  # ValueError: the caller counts it
        while len(self.buffer) < length:
            await self._read()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        if "close" in fields.get("connection", ""):
            await self.close()
        return int(lines[0].split()[1]), answer

    async def _read(self) -> None:
        data = await self.stream.receive_some(65_536)
        if not data:
            raise trio.BrokenResourceError("server closed the connection")
        self.buffer += data

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None
