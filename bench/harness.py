"""The benchmark's moving parts: the database, the server and fleet processes and what
observes them (the HTTP senders are in bench/senders.py). bench/run.py composes them into
scenarios."""

from __future__ import annotations

import collections
import functools
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Callable

import attrs
import httpx
import psycopg
import trio

from bench.echo_ceiling import read_line
from bench.simulator import latencies, percentile

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SMSGW = ROOT / ".venv" / "bin" / "smsgw"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"



def raise_nofile(target: int = 65_536) -> None:
    """Lift RLIMIT_NOFILE as far as allowed (10,000 sockets need more than the usual 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, target), max(hard, target)), (max(soft, min(target, hard)), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue



# --- Senders and observers --------------------------------------------------------------------

async def wait_delivered(dsn: str, floor: int, expected: int, *, deadline: float, stall_after: float = 30.0,
                         on_progress: Callable[[], None] = lambda: None) -> dict:
    """Watch the database (another process owns the rows) until `expected` outbound messages
    above row id `floor` are delivered or failed; give up after `deadline` seconds, or when
    nothing moved for `stall_after` seconds. `on_progress` is called after each poll that saw
    more messages finished."""
    query = ("SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered,"
             " count(*) FILTER (WHERE status = 'failed') AS failed,"
             " extract(epoch FROM max(delivered_at))::float8 AS last_delivered_epoch"
             " FROM messages WHERE id > %s AND direction = 'outbound'")

    def poll() -> dict:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(query, (floor,)).fetchone()
        return {"delivered": row[0], "failed": row[1], "last_delivered_epoch": row[2]}

    finished, moved_at = -1, time.monotonic()
    with trio.move_on_after(deadline):
        while time.monotonic() - moved_at < stall_after:
            state = await trio.to_thread.run_sync(poll)
            if state["delivered"] + state["failed"] > finished:
                finished, moved_at = state["delivered"] + state["failed"], time.monotonic()
                on_progress()
            if finished >= expected:
                return {**state, "timed_out": False}
            await trio.sleep(0.25)
    return {**await trio.to_thread.run_sync(poll), "timed_out": True}


def match_latencies(accepted_at: dict[str, float], fleet: dict) -> dict:
    """p50/p99 from each 202 to its send_sms on a socket, and to its `delivered` report."""
    to_socket = latencies(accepted_at, fleet["arrived"])
    to_delivered = latencies(accepted_at, fleet["delivered"])
    early = sum(1 for v in to_socket if v < 0)  # the frame beat the HTTP answer to its client

    def ms(values: list[float], q: float) -> float | None:
        value = percentile([max(0.0, v) for v in values], q)
        return None if value is None else round(value * 1000, 1)

    return {"matched": len(to_socket), "socket_before_202": early,
            "p50_accept_to_socket_ms": ms(to_socket, 50), "p99_accept_to_socket_ms": ms(to_socket, 99),
            "p50_accept_to_delivered_ms": ms(to_delivered, 50), "p99_accept_to_delivered_ms": ms(to_delivered, 99)}


@attrs.define
class _CpuWatch:
    """CPU time of some processes (% of one core each) and how busy the whole machine was (% of
    all cores), between `start` and `stop`, from /proc. The `server` counts with its workers."""

    pids: dict[str, int]
    wall: float
    used: dict[str, float]
    busy: int
    total: int

    @classmethod
    def start(cls, pids: dict[str, int]) -> "_CpuWatch":
        return cls(pids, time.monotonic(), {k: _process_cpu(p, tree=k == "server") for k, p in pids.items()},
                   *_machine_jiffies())

    seconds: dict[str, float] = attrs.Factory(dict)  # CPU seconds of each process up to the last stop

    def stop(self) -> tuple[dict[str, float], float]:
        busy, total = _machine_jiffies()
        wall = time.monotonic() - self.wall
        self.seconds = {k: _process_cpu(p, tree=k == "server") - self.used[k] for k, p in self.pids.items()}
        return ({k: round(100 * used / wall, 1) for k, used in self.seconds.items()},
                round(100 * (busy - self.busy) / max(1, total - self.total), 1))


def _process_cpu(pid: int, *, tree: bool = False) -> float:
    """CPU seconds of `pid` (with `tree`, and of its live children: the workers of
    `smsgw serve --workers`)."""
    total = 0
    for one in process_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{one}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live child processes, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(pid):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry))
    return [pid, *children]


def _machine_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


async def _sample_db_backends(dsn: str, seen: collections.Counter) -> None:
    """What the server's PostgreSQL backends are doing, sampled every 100 ms until cancelled."""
    name = dsn.rsplit("/", 1)[1]
    query = ("SELECT state || ' / ' || coalesce(wait_event_type || ':' || wait_event, 'on CPU'), count(*)"
             " FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
             " AND pid <> pg_backend_pid() AND state IS NOT NULL GROUP BY 1")
    conn = await trio.to_thread.run_sync(functools.partial(psycopg.connect, ADMIN_URL, autocommit=True))
    try:
        while True:
            rows = await trio.to_thread.run_sync(lambda: conn.execute(query, (name,)).fetchall())
            seen.update({what: n for what, n in rows})
            await trio.sleep(0.1)
    finally:
        conn.close()


@attrs.define
class _Peak:
    first: int
    value: int = 0


async def _sample_rss(server: "Server", peak: _Peak) -> None:
    while True:
        peak.value = max(peak.value, server.rss())
        await trio.sleep(0.5)


async def _steady_rss(server: "Server") -> int:
    samples = []
    for _ in range(3):
        samples.append(server.rss())
        await trio.sleep(0.5)
    return sorted(samples)[1]


def _max_message_row(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]


# --- Processes: database, server, fleet --------------------------------------------------------

def create_database() -> str:
    name = f"smsgw_bench_{datetime.now(timezone.utc):%Y%m%d%H%M%S}_{secrets.token_hex(2)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(dsn: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')


def server_env(dsn: str, work: Path, *, workers: int = 1) -> dict[str, str]:
    """One node on its own; with `workers` > 1, `smsgw serve --workers` on the machine's Redis
    (BENCH_REDIS_URL, default redis://127.0.0.1:6379/0) under a prefix of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PORT", "HOST", "WORKERS")}
    env.update(DATABASE_URL=dsn, GATEWAY_SEND_RATE_PER_MINUTE="0", RATE_LIMIT_PER_KEY_PER_MINUTE="0",
               RATE_LIMIT_REGISTER_PER_MINUTE="0", LOG_LEVEL="WARNING", SMSGW_VAR_DIR=str(work / "var"),
               SECRET_KEY_BASE="bench-" + secrets.token_hex(16), DEFAULT_COUNTRY_CODE="US")
    if workers > 1:
        env.update(WORKERS=str(workers), REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   REDIS_PREFIX="bench_" + secrets.token_hex(4))
    return env


def create_client_key(env: dict[str, str]) -> str:
    out = subprocess.run([str(SMSGW), "keys", "create", "--name", "bench", "--scopes", "sms,admin", "--json"],
                         env=env, check=True, capture_output=True, text=True, timeout=60, cwd=ROOT)
    return json.loads(out.stdout)["api_key"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.define
class Server:
    process: trio.Process
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident set size of the server process (and its workers, if any) in bytes."""
        total = 0
        for pid in process_tree(self.pid):
            try:
                with open(f"/proc/{pid}/status") as status:
                    total += next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0)
            except OSError:
                continue
        return total


@asynccontextmanager
async def running_server(env: dict[str, str], log_path: Path) -> AsyncIterator[Server]:
    """`smsgw serve` on a free port with RLIMIT_NOFILE raised; SIGTERM and a wait on exit."""
    port = _free_port()
    with open(log_path, "wb") as log, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(functools.partial(
                trio.run_process, [str(SMSGW), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                cwd=ROOT, stdout=log, stderr=log, check=False, preexec_fn=raise_nofile))
            server = Server(process=process, url=f"http://127.0.0.1:{port}")
            await _wait_up(server, log_path)
            try:
                yield server
            finally:
                process.terminate()
                with trio.move_on_after(20) as waited:
                    await process.wait()
                if waited.cancelled_caught:
                    scope.cancel()  # run_process kills it


async def _wait_up(server: Server, log_path: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=2) as http:
        with trio.fail_after(60):
            while True:
                if server.process.returncode is not None:
                    raise RuntimeError(f"smsgw serve exited; see {log_path}:\n{log_path.read_text()[-2000:]}")
                try:
                    if (await http.get("/up")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.2)


@attrs.define
class Fleet:
    """The fleet process as the bench sees it: progress from its stdout, stats once it ended."""

    process: trio.Process
    stats_path: Path
    online: int = 0
    connects: int = 0
    ready: trio.Event = attrs.Factory(trio.Event)
    _stats: dict | None = None

    def stats(self) -> dict:
        if self._stats is None:
            self._stats = json.loads(self.stats_path.read_text())
        return self._stats

    async def follow(self) -> None:
        """Read `online <n> <connects>` and `ready` lines until the process closes stdout."""
        while line := await read_line(self.process.stdout):
            match line.split():
                case ["ready"]:
                    self.ready.set()
                case ["online", online, connects]:
                    self.online, self.connects = int(online), int(connects)


@asynccontextmanager
async def running_fleet(url: str, gateways: int, work: Path, *, prefix: str, register: bool = True,
                        ready_deadline: float | None = 180.0, connect_concurrency: int = 64
                        ) -> AsyncIterator[Fleet]:
    """The simulated phones in their own process (delivery 0 ms), every one subscribed within
    `ready_deadline` seconds (None: enter at once; watch `fleet.ready`); stats readable on exit."""
    stats_path = work / f"fleet-{prefix}.json"
    argv = [sys.executable, "-m", "bench.simulator", "--url", url, "--gateways", str(gateways), "--prefix", prefix,
            "--keys", str(work / f"{prefix}-keys.json"), "--stats-out", str(stats_path), "--delivery-ms", "0",
            "--connect-concurrency", str(connect_concurrency),
            "--log-level", os.environ.get("BENCH_FLEET_LOG_LEVEL", "WARNING")]
    if not register:
        argv.append("--no-register")
    async with trio.open_nursery() as nursery:
        process = await nursery.start(functools.partial(
            trio.run_process, argv, cwd=ROOT, stdout=subprocess.PIPE, check=False, preexec_fn=raise_nofile))
        fleet = Fleet(process=process, stats_path=stats_path)
        nursery.start_soon(fleet.follow)
        try:
            if ready_deadline is not None:
                with trio.fail_after(ready_deadline):
                    await fleet.ready.wait()
            yield fleet
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                await process.wait()
            fleet.stats()
        finally:
            nursery.cancel_scope.cancel()
