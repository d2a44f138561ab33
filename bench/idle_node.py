"""Memory per idle socket when the phones are real `ws` clients (`make bench` uses Python ones).

`ws`, browsers and OkHttp offer permessage-deflate; trio-websocket, which the simulator uses,
does not. This opens N sockets with `ws` and its default options (tests/node/idle_fleet.mjs),
subscribes each, waits a few pings and prints the server's RSS per socket and the extensions
the sockets got. It is how the cost of compression was found (137 KB per socket with it,
34 KB without).

    .venv/bin/python -m bench.idle_node --sockets 1000
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from bench.fleet_keys import register_phones
from bench.harness import (ROOT, _steady_rss, create_database, drop_database, raise_nofile, running_server,
                           server_env)

NODE_DIR = ROOT / "tests" / "node"


async def measure(sockets: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="smsgw-idle-node-"))
    dsn = await trio.to_thread.run_sync(create_database)
    try:
        async with running_server(server_env(dsn, work), work / "server.log") as server:
            keys = work / "keys.json"
            await register_phones(server.url, sockets, prefix="idle", keys_path=keys, concurrency=32)
            await trio.sleep(2)
            before = await _steady_rss(server)
            env = {**os.environ, "BASE_URL": server.url.replace("http://", "ws://"), "KEYS": str(keys)}
            async with trio.open_nursery() as nursery:
                fleet = await nursery.start(functools.partial(
                    trio.run_process, ["node", "idle_fleet.mjs"], cwd=NODE_DIR, env=env, stdout=subprocess.PIPE,
                    check=False, preexec_fn=raise_nofile))
                line = b""
                with trio.fail_after(300):
                    while b"\n" not in line:
                        line += await fleet.stdout.receive_some() or b""
                await trio.sleep(10)  # a few pings on every socket
                after = await _steady_rss(server)
                fleet.kill()
                nursery.cancel_scope.cancel()
        _, up, retried, extensions = line.decode().split(maxsplit=3)
        return (f"{up} `ws` sockets (extensions {extensions.strip()}; {retried} opens retried after a reset): "
                f"{(after - before) / int(up) / 1024:.1f} KB of server RSS each")
    finally:
        await trio.to_thread.run_sync(drop_database, dsn)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_node", description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1_000)
    opts = parser.parse_args()
    if not (NODE_DIR / "node_modules").exists():
        print("run `make test` once first (it installs tests/node/node_modules)", file=sys.stderr)
        return 2
    raise_nofile()
    print(trio.run(measure, opts.sockets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
