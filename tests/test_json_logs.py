"""`LOG_FORMAT=json`: a real `smsgw serve` writes one JSON object per stderr line, and lines about
a phone carry its `device_id`."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.conftest import Node, clean, node_env, phone

ROOT = Path(__file__).resolve().parent.parent


def smsgw_command() -> list[str]:
    script = Path(sys.executable).parent / "smsgw"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


class LineReader:
    def __init__(self, stream) -> None:
        self.stream, self.buffer, self.lines = stream, b"", []

    async def until(self, pattern: str) -> re.Match:
        """Read lines until one matches `pattern`; keep every line read."""
        while True:
            for line in self.lines:
                found = re.search(pattern, line)
                if found:
                    return found
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"stderr ended before {pattern!r}: {self.lines}")
            self.buffer += chunk
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]

    async def drain(self) -> list[str]:
        while chunk := await self.stream.receive_some(65536):
            self.buffer += chunk
        self.lines += [line.decode() for line in self.buffer.split(b"\n") if line]
        return self.lines


async def test_serve_with_log_format_json_writes_only_json_lines(database_url):
    clean(database_url)
    env = {**os.environ, **node_env(database_url, LOG_FORMAT="json", LOG_LEVEL="INFO")}
    serve = functools.partial(trio.run_process, smsgw_command() + ["serve"], cwd=ROOT, env=env, check=False,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:  # a failing test kills the server on the way out
            process = await nursery.start(serve)
            reader = LineReader(process.stderr)
            url = (await reader.until(r"serving on (http://[0-9.]+:\d+)")).group(1)
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                server = Node(url=url, http=http, database_url=database_url, shutdown=trio.Event())
                key = await server.register("json-phone", name='Phone "quoted" \n two lines')
                async with phone(server, key):
                    await reader.until(r"gateway json-phone connected")
                await reader.until(r"gateway json-phone disconnected")
            process.send_signal(signal.SIGTERM)
            lines = await reader.drain()
            assert await process.wait() == 0
    entries = [json.loads(line) for line in lines]  # a line that is not JSON fails here
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    connected = [e for e in entries if e["message"] == "gateway json-phone connected"]
    assert connected and connected[0]["device_id"] == "json-phone"
    assert connected[0]["logger"] == "smsgw.cable"
