"""The relay ceiling: a bare trio-websocket server that answers each phone frame at once.

Each client socket sends what a phone sends (a `delivery_report` command, `data` a JSON
string) and the server parses it and answers with what the gateway server sends (a
`send_sms` frame wrapped with the identifier), no database, no framework. Round-trips per
second over 200 sockets is the most any Python WebSocket relay on this machine can do; the
benchmark reports the real server's delivered/s as a fraction of it.

`python -m bench.echo_ceiling serve --port N` runs the server alone (prints `port N`);
`python -m bench.echo_ceiling` runs it in a child process and measures against it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket

__all__ = ["measure_ceiling", "read_line", "serve_echo", "spawn_echo_server"]

IDENTIFIER = json.dumps({"channel": "GatewayChannel", "api_key_digest": "0" * 64}, separators=(",", ":"))


async def serve_echo(port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the echo relay on 127.0.0.1:`port` until cancelled; `task_status` gets the port."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="actioncable-v1-json")
        try:
            while True:
                frame = json.loads(await ws.get_message())
                data = json.loads(frame["data"])
                await ws.send_message(json.dumps({"identifier": frame["identifier"], "message": {
                    "action": "send_sms", "message_id": data["message_id"], "recipient": "+14155552671",
                    "message": "bench message", "segments": 1, "priority": "normal"}}, separators=(",", ":")))
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", port, None)
        task_status.started(server.port)


@attrs.define
class _Count:
    round_trips: int = 0
    counting: bool = False


async def measure_ceiling(port: int, *, sockets: int = 200, seconds: float = 5.0, warmup: float = 1.0) -> dict:
    """Round-trips per second over `sockets` sockets, each sending its next command as soon as
    the answer to the last one arrives; the first `warmup` seconds are not counted."""
    count = _Count()
    url = f"ws://127.0.0.1:{port}/cable"

    async def client(index: int, connected: trio.MemorySendChannel) -> None:
        async with open_websocket_url(url, subprotocols=["actioncable-v1-json"], connect_timeout=10) as ws:
            await connected.send(index)
            n = 0
            while True:
                n += 1
                data = json.dumps({"action": "delivery_report", "message_id": f"msg_{index}_{n}",
                                   "status": "delivered"})
                await ws.send_message(json.dumps({"command": "message", "identifier": IDENTIFIER, "data": data}))
                answer = json.loads(await ws.get_message())
                if count.counting and answer["message"]["action"] == "send_sms":
                    count.round_trips += 1

    async with trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel(sockets)
        for i in range(sockets):
            nursery.start_soon(client, i, send)
        with trio.fail_after(60):
            for _ in range(sockets):
                await receive.receive()
        await trio.sleep(warmup)
        count.counting = True
        started = time.monotonic()
        await trio.sleep(seconds)
        count.counting = False
        elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    return {"sockets": sockets, "seconds": round(elapsed, 2), "round_trips": count.round_trips,
            "round_trips_per_s": round(count.round_trips / elapsed, 1)}


async def spawn_echo_server(nursery: trio.Nursery) -> tuple[trio.Process, int]:
    """Start the echo server as a child process in `nursery` (killed when it is cancelled)."""
    process = await nursery.start(lambda task_status: trio.run_process(
        [sys.executable, "-m", "bench.echo_ceiling", "serve"], stdout=subprocess.PIPE, check=False,
        task_status=task_status))
    with trio.fail_after(20):
        line = await read_line(process.stdout)
    if not line.startswith("port "):
        raise RuntimeError(f"echo server did not start: {line!r}")
    return process, int(line.split()[1])


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    """One line from a child's stdout, read byte by byte (nothing past the newline is lost);
    "" when the child closed it first."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        line += chunk
    return line.decode(errors="replace")


async def _measure_in_child(sockets: int, seconds: float) -> dict:
    async with trio.open_nursery() as nursery:
        _, port = await spawn_echo_server(nursery)
        result = await measure_ceiling(port, sockets=sockets, seconds=seconds)
        nursery.cancel_scope.cancel()
    return result


async def _serve_forever(port: int) -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_echo, port)
        print(f"port {bound}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.echo_ceiling")
    parser.add_argument("mode", nargs="?", choices=("serve", "measure"), default="measure")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    opts = parser.parse_args()
    try:
        if opts.mode == "serve":
            trio.run(_serve_forever, opts.port)
        else:
            print(json.dumps(trio.run(_measure_in_child, opts.sockets, opts.seconds)))
    except KeyboardInterrupt:
        pass
