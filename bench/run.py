"""`make bench`: the gateway server under load, measured from outside, figures appended to
bench/RESULTS.md.

A fresh database on the local PostgreSQL, a real `smsgw serve` process, the simulated phones in
a process of their own (`python -m bench.simulator`), the HTTP senders in this one. Scenarios:
(a) throughput and latency through the whole path (REST 202 -> `send_sms` on a socket ->
`delivered` stored), saturated and then paced at half the rate reached; (b) the relay ceiling of
a bare trio-websocket server (bench/echo_ceiling.py); (c) memory per idle gateway socket; and a
py-spy profile of the server under load. Every wait has a deadline; the run stops by itself.
Never part of `make test`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Callable

import attrs
import httpx
import psycopg
import trio

from bench.echo_ceiling import measure_ceiling, read_line, spawn_echo_server
from bench.simulator import latencies, percentile, register_phones

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SMSGW = ROOT / ".venv" / "bin" / "smsgw"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    if opts.quick:
        opts.messages = opts.messages or 2_000
        opts.idle_sockets = 1_000 if opts.idle_sockets is None else opts.idle_sockets
    opts.messages = opts.messages or 20_000
    opts.idle_sockets = 10_000 if opts.idle_sockets is None else opts.idle_sockets
    raise_nofile()
    try:
        results = trio.run(run_bench, opts)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    section = results_section(results, opts)
    path = Path(opts.results)
    append_results(path, section)
    print(section)
    print(f"appended to {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, help="messages in the throughput run (default 20,000; --quick 2,000)")
    p.add_argument("--gateways", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64, help="concurrent HTTP senders")
    p.add_argument("--quick", action="store_true", help="2,000 messages and 1,000 idle sockets")
    p.add_argument("--idle-sockets", type=int, help="idle gateway sockets in (c) (default 10,000; 0 skips)")
    p.add_argument("--idle-connect-concurrency", type=int, default=16,
                   help="idle phones opening their socket at the same time (default 16)")
    p.add_argument("--idle-deadline", type=float, default=600.0,
                   help="seconds for every idle phone to subscribe; past it, measure what is up")
    p.add_argument("--ceiling-seconds", type=float, default=5.0)
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
    p.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    return p


def raise_nofile(target: int = 65_536) -> None:
    """Lift RLIMIT_NOFILE as far as allowed (10,000 sockets need more than the usual 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, target), max(hard, target)), (max(soft, min(target, hard)), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue


async def run_bench(opts: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    results: dict = {"machine": await trio.to_thread.run_sync(machine_facts, ADMIN_URL), "work_dir": str(work),
                     "load_before": os.getloadavg()}
    dsn = await trio.to_thread.run_sync(create_database)
    env = server_env(dsn, work)
    try:
        client_key = await trio.to_thread.run_sync(create_client_key, env)
        async with running_server(env, work / "server-a.log") as server:
            async with running_fleet(server.url, opts.gateways, work, prefix="bench") as fleet:
                results["throughput"] = await scenario_throughput(server, fleet, dsn, client_key, opts)
                rate = min(1_000.0, 0.5 * (results["throughput"]["delivered_per_s"] or 0)) or 100.0
                count = max(500, min(opts.messages // 4, int(rate * 15)))
                results["paced"] = await scenario_throughput(server, fleet, dsn, client_key, opts,
                                                             count=count, rate=rate)
                if opts.profile:
                    results["profile"] = await scenario_profile(server, fleet, dsn, client_key, opts, work)
            stats = fleet.stats()
            for name in ("throughput", "paced"):
                results[name].update(match_latencies(results[name].pop("accepted_at"), stats))
            results["fleet"] = {k: stats.get(k, 0) for k in ("duplicates", "connects", "held_reports")}
        results["ceiling"] = await scenario_ceiling(opts)
        if opts.idle_sockets:
            async with running_server(env, work / "server-c.log") as server:
                results["idle"] = await scenario_idle(server, opts.idle_sockets, work, deadline=opts.idle_deadline,
                                                      connect_concurrency=opts.idle_connect_concurrency)
    finally:
        if not opts.keep_db:
            await trio.to_thread.run_sync(drop_database, dsn)
    results["load_after"] = os.getloadavg()
    return results


# --- Scenarios ------------------------------------------------------------------------------

async def scenario_throughput(server: "Server", fleet: "Fleet", dsn: str, key: str, opts, *,
                              count: int | None = None, rate: float | None = None) -> dict:
    """Send `count` messages (as fast as the senders go, or paced at `rate`/s), wait until all
    are delivered (or failed) in the database; accepted/s, delivered/s, RSS."""
    count = count or opts.messages
    floor = await trio.to_thread.run_sync(_max_message_row, dsn)
    peak = _Peak(server.rss())
    cpu = _CpuWatch.start({"server": server.pid, "phones": fleet.process.pid, "senders": os.getpid()})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_rss, server, peak)
        wall_start = time.time()
        sent = await send_messages(server.url, key, count, concurrency=opts.concurrency, rate=rate)
        cpu_figures = cpu.stop()

        def progressed() -> None:
            nonlocal cpu_figures
            cpu_figures = cpu.stop()  # CPU up to the last message finished, not the idle wait after

        done = await wait_delivered(dsn, floor, len(sent.accepted), deadline=max(60.0, count / 50),
                                    on_progress=progressed)
        nursery.cancel_scope.cancel()
    span = (done["last_delivered_epoch"] or time.time()) - wall_start
    cpu_pct, machine_busy = cpu_figures
    return {
        "messages": count, "paced_rate": rate, "accepted": len(sent.accepted), "errors": dict(sent.errors),
        "accepted_per_s": round(len(sent.accepted) / sent.elapsed, 1) if sent.elapsed else None,
        "delivered": done["delivered"], "failed": done["failed"], "timed_out": done["timed_out"],
        "delivered_per_s": round(done["delivered"] / span, 1) if span > 0 else None,
        "rss_before_mb": round(peak.first / 2**20, 1), "rss_peak_mb": round(peak.value / 2**20, 1),
        "rss_after_mb": round(server.rss() / 2**20, 1), "accepted_at": sent.accepted,
        "cpu_pct": cpu_pct, "machine_busy_pct": machine_busy,
    }


async def scenario_profile(server: "Server", fleet: "Fleet", dsn: str, key: str, opts, work: Path) -> dict:
    """A saturated run of a quarter of the messages with py-spy attached; top functions."""
    if not PY_SPY.exists():
        return {"skipped": "py-spy is not installed in .venv (.venv/bin/pip install py-spy)"}
    raw = work / "profile.txt"
    async with trio.open_nursery() as nursery:
        spy = await nursery.start(functools.partial(
            trio.run_process, [str(PY_SPY), "record", "--pid", str(server.pid), "--rate", "200", "--format", "raw",
                               "--nolineno", "--threads", "--gil", "--nonblocking", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False))
        await trio.sleep(1)
        backends: collections.Counter = collections.Counter()
        async with trio.open_nursery() as sampling:
            sampling.start_soon(_sample_db_backends, dsn, backends)
            figures = await scenario_throughput(server, fleet, dsn, key, opts, count=max(1_000, opts.messages // 4))
            sampling.cancel_scope.cancel()
        spy.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await spy.wait()
    figures.pop("accepted_at")
    total = sum(backends.values()) or 1
    return {"figures": figures, **profile_summary(raw.read_text() if raw.exists() else ""),
            "db_backends": [(what, round(100 * n / total, 1)) for what, n in backends.most_common(8)]}


async def scenario_ceiling(opts) -> dict:
    async with trio.open_nursery() as nursery:
        _, port = await spawn_echo_server(nursery)
        result = await measure_ceiling(port, sockets=opts.gateways, seconds=opts.ceiling_seconds)
        nursery.cancel_scope.cancel()
    return result


async def scenario_idle(server: "Server", sockets: int, work: Path, *, connect_concurrency: int,
                        deadline: float) -> dict:
    """Register `sockets` phones, then hold that many subscribed sockets open doing nothing but
    pings and heartbeats; server RSS before and after, per socket subscribed at the end (all of
    them, unless `deadline` seconds were not enough)."""
    keys = work / "idle-keys.json"
    started = time.monotonic()
    await register_phones(server.url, sockets, prefix="idle", keys_path=keys, concurrency=32)
    registered_in = time.monotonic() - started
    await trio.sleep(2)
    before = await _steady_rss(server)
    started = time.monotonic()
    ramp: list[tuple[float, float]] = []  # (sockets online, server RSS) every 2 s
    async with running_fleet(server.url, sockets, work, prefix="idle", register=False, ready_deadline=None,
                             connect_concurrency=connect_concurrency) as fleet:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sample_ramp, server, fleet, ramp)
            with trio.move_on_after(deadline):
                await fleet.ready.wait()
            connected_in = time.monotonic() - started
            await trio.sleep(5)
            after = await _steady_rss(server)
            online, peak = fleet.online, max(n for n, _ in ramp)
            nursery.cancel_scope.cancel()
    stats = fleet.stats()
    slope = least_squares_slope(ramp)
    return {"sockets": sockets, "online": online, "peak_online": peak, "all_subscribed": fleet.ready.is_set(),
            "registered_in_s": round(registered_in, 1), "connected_in_s": round(connected_in, 1),
            "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
            "kb_per_socket": round((after - before) / max(1, online) / 1024, 1), "connects": stats["connects"],
            "kb_per_socket_slope": None if slope is None else round(slope / 1024, 1),
            "ramp_samples": len(ramp), "connect_concurrency": connect_concurrency}


async def _sample_ramp(server: "Server", fleet: "Fleet", ramp: list[tuple[float, float]]) -> None:
    while True:
        ramp.append((fleet.online, server.rss()))
        await trio.sleep(2)


def least_squares_slope(points: list[tuple[float, float]]) -> float | None:
    """The slope of the least-squares line through (x, y) points; None when x never varies."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


# --- Senders and observers --------------------------------------------------------------------

@attrs.define
class Sent:
    accepted: dict[str, float] = attrs.Factory(dict)  # message_id -> time.monotonic() of the 202
    errors: collections.Counter = attrs.Factory(collections.Counter)
    elapsed: float = 0.0


async def send_messages(url: str, key: str, count: int, *, concurrency: int, rate: float | None) -> Sent:
    """POST /api/v1/sms/send `count` times from `concurrency` workers, paced at `rate`/s if given."""
    sent = Sent()
    send, receive = trio.open_memory_channel(concurrency)
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def worker(tickets: trio.MemoryReceiveChannel) -> None:
        http = _JsonPoster(host, int(port), key)
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


@attrs.define
class _JsonPoster:
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
    all cores), between `start` and `stop`, from /proc."""

    pids: dict[str, int]
    wall: float
    used: dict[str, float]
    busy: int
    total: int

    @classmethod
    def start(cls, pids: dict[str, int]) -> "_CpuWatch":
        return cls(pids, time.monotonic(), {k: _process_cpu(p) for k, p in pids.items()}, *_machine_jiffies())

    def stop(self) -> tuple[dict[str, float], float]:
        busy, total = _machine_jiffies()
        wall = time.monotonic() - self.wall
        return ({k: round(100 * (_process_cpu(p) - self.used[k]) / wall, 1) for k, p in self.pids.items()},
                round(100 * (busy - self.busy) / max(1, total - self.total), 1))


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


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


def server_env(dsn: str, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PORT", "HOST")}
    env.update(DATABASE_URL=dsn, GATEWAY_SEND_RATE_PER_MINUTE="0", RATE_LIMIT_PER_KEY_PER_MINUTE="0",
               RATE_LIMIT_REGISTER_PER_MINUTE="0", LOG_LEVEL="WARNING", SMSGW_VAR_DIR=str(work / "var"),
               SECRET_KEY_BASE="bench-" + secrets.token_hex(16), DEFAULT_COUNTRY_CODE="US")
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
        """Resident set size of the server process in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


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
            "--connect-concurrency", str(connect_concurrency)]
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


# --- The report ---------------------------------------------------------------------------------

TARGETS = ("≥ 2,000 SMS/s end to end", "p99 accept→socket < 50 ms at half that rate", "< 40 KB per idle socket",
           "≥ 50 % of the relay ceiling")


def machine_facts(admin_url: str) -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as info:
        mem_kb = next(int(line.split()[1]) for line in info if line.startswith("MemTotal:"))
    with psycopg.connect(admin_url) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    git = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, check=False)
    commit = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
    if git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip():
        commit += " + uncommitted changes"
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "postgresql": pg, "kernel": platform.release(), "commit": commit}


def profile_summary(raw: str, top: int = 12) -> dict:
    """Read py-spy's raw output (`--threads --nolineno`): the share of samples per thread kind
    and the functions where they fall, by own time and by time including callees."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    packages: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), [f for f in stack.split(";") if not f.startswith("thread (")]
        total += n
        kind = "worker threads (to_thread: psycopg)" if any("_thread_cache.py" in f for f in frames) \
            else "event-loop thread"
        threads[kind] += n
        if frames:
            own[_short(frames[-1])] += n
            packages[_package(_short(frames[-1]))] += n
        for frame in {_short(f) for f in frames}:
            if not any(p in frame for p in _PLUMBING):
                inclusive[frame] += n

    def share(counter: collections.Counter) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "threads": share(threads), "own": share(own), "inclusive": share(inclusive),
            "packages": share(packages)}


# Frames every stack passes through: they say nothing about where the time goes.
_PLUMBING = ("threading.py", "_thread_cache.py", "outcome/", "trio/_core/_run.py", "trio/_threads.py",
             "<module>", "(cli.py)", "(supervisor.py)", "contextlib.py")


def _package(frame: str) -> str:
    """`psycopg` from `Connection.wait (psycopg/connection.py)`; our own modules by folder."""
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.split("/", 1)[0] if "/" in where else where.removesuffix(".py")


def _short(frame: str) -> str:
    """`send (quart/wrappers.py)` from py-spy's `send (/…/site-packages/quart/wrappers.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def results_section(r: dict, opts) -> str:
    m, a, p = r["machine"], r["throughput"], r["paced"]
    ceiling, idle = r["ceiling"], r.get("idle")
    fraction = a["delivered_per_s"] / ceiling["round_trips_per_s"] if a["delivered_per_s"] else None

    def met(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "**no**")

    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {_run_kind(opts)}",
        "",
        f"Machine: {m['nproc']} × {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}; commit {m['commit']}. Server: one `smsgw serve` process, defaults "
        "(DB_POOL_SIZE 10) but GATEWAY_SEND_RATE_PER_MINUTE=0 and rate limits off; phones and senders in "
        "their own processes on the same cores. Load average (1/5/15 min) "
        f"{_load(r['load_before'])} before, {_load(r['load_after'])} after (other sessions share this machine).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| {TARGETS[0]} | {_num(a['delivered_per_s'])} delivered/s | {met(_ge(a['delivered_per_s'], 2000))} |",
        f"| {TARGETS[1]} | {_num(p['p99_accept_to_socket_ms'])} ms at {_num(p['paced_rate'])}/s | "
        f"{met(None if p['p99_accept_to_socket_ms'] is None else p['p99_accept_to_socket_ms'] < 50)} |",
        f"| {TARGETS[2]} | " + (f"{idle['kb_per_socket']} KB ({idle['online']:,} of {idle['sockets']:,} sockets up); "
                               f"ramp slope {_num(idle['kb_per_socket_slope'])} KB | "
                               f"{met(idle['kb_per_socket'] < 40 and idle['all_subscribed'])} |"
                               if idle else "not run | — |"),
        f"| {TARGETS[3]} | " + (f"{100 * fraction:.0f} % ({_num(a['delivered_per_s'])} of "
                               f"{_num(ceiling['round_trips_per_s'])}/s) | {met(fraction >= 0.5)} |"
                               if fraction is not None else "— | — |"),
        "",
    ]
    for title, run in (("(a) saturated", a), ("(a) paced", p)):
        paced = f" paced at {run['paced_rate']:.0f}/s" if run["paced_rate"] else ""
        lines.append(
            f"- {title}: {run['messages']:,} messages over {opts.gateways} phones, {opts.concurrency} concurrent "
            f"senders{paced}: "
            f"{_num(run['accepted_per_s'])} accepted/s, {_num(run['delivered_per_s'])} delivered/s end to end "
            f"(first send → last `delivered_at` stored); {run['delivered']:,} delivered, {run['failed']} failed, "
            f"errors {run['errors'] or 'none'}"
            f"{', **the rest never finished** (no progress for 30 s)' if run['timed_out'] else ''}. "
            f"202 → `send_sms` on the socket p50 {_num(run['p50_accept_to_socket_ms'])} ms, "
            f"p99 {_num(run['p99_accept_to_socket_ms'])} ms ({run['socket_before_202']} frames arrived before "
            f"their 202, counted as 0); 202 → `delivered` reported p50 {_num(run['p50_accept_to_delivered_ms'])} ms, "
            f"p99 {_num(run['p99_accept_to_delivered_ms'])} ms. Server RSS {run['rss_before_mb']} → peak "
            f"{run['rss_peak_mb']} MB, {run['rss_after_mb']} MB after. CPU, % of one core: "
            + ", ".join(f"{k} {v}" for k, v in run["cpu_pct"].items())
            + f"; the machine was {run['machine_busy_pct']} % busy (all processes, all cores).")
    lines.append(f"- (b) ceiling: bare trio-websocket relay, {ceiling['sockets']} sockets, client and server in two "
                 f"processes: {_num(ceiling['round_trips_per_s'])} round-trips/s over {ceiling['seconds']} s.")
    if idle:
        up = (f"all subscribed in {idle['connected_in_s']} s" if idle["all_subscribed"] else
              f"**only {idle['online']:,} subscribed after {idle['connected_in_s']} s**")
        lines.append(
            f"- (c) idle: {idle['sockets']:,} phones registered in {idle['registered_in_s']} s (32 at a time), "
            f"opening sockets {idle['connect_concurrency']} at a time, {up} ({idle['connects']:,} subscriptions "
            f"counting reconnects, at most {idle['peak_online']:,} up at once); server RSS {idle['rss_before_mb']} → "
            f"{idle['rss_after_mb']} MB = {idle['kb_per_socket']} KB per socket up at the end; the slope of RSS "
            f"against sockets up over the ramp ({idle['ramp_samples']} samples) says "
            f"{_num(idle['kb_per_socket_slope'])} KB per socket (pings every 3 s, heartbeats every 30 s).")
    lines.append(f"- Phones in (a): {r['fleet']['connects']} subscriptions for {opts.gateways} phones (more: "
                 f"reconnects), {r['fleet']['duplicates']:,} repeated `send_sms` (at-least-once redelivery), "
                 f"{r['fleet'].get('held_reports', 0):,} reports held while a phone was offline.")
    prof = r.get("profile")
    if prof and "skipped" not in prof:
        lines += ["", f"Profile (py-spy `--gil`, 200 Hz: {prof['samples']:,} samples holding the GIL, i.e. Python "
                      f"running, during a saturated run of "
                      f"{prof['figures']['messages']:,} messages, {_num(prof['figures']['delivered_per_s'])} "
                      "delivered/s under the profiler). GIL time by thread: "
                      + ", ".join(f"{k} {v} %" for k, v in prof["threads"]) + ".",
                  "",
                  "| own time | % | including callees | % |", "|---|---|---|---|"]
        for (own, own_pct), (inc, inc_pct) in zip(prof["own"], prof["inclusive"]):
            lines.append(f"| `{own}` | {own_pct} | `{inc}` | {inc_pct} |")
        lines += ["", "Own time by package: " + ", ".join(f"{k} {v} %" for k, v in prof["packages"]) + ".", "",
                  "The server's PostgreSQL connections, sampled every 100 ms (state / wait event): "
                  + ", ".join(f"{k} {v} %" for k, v in prof["db_backends"]) + "."]
    elif prof:
        lines.append(f"- Profile skipped: {prof['skipped']}")
    return "\n".join(lines) + "\n"


def _run_kind(opts) -> str:
    """`quick run`, `full run` (no options), or the options given."""
    if opts.argv == ["--quick"]:
        return "quick run"
    return f"run with `{' '.join(opts.argv)}`" if opts.argv else "full run"


def _load(averages: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in averages)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ge(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def append_results(path: Path, section: str) -> None:
    """Append a run's section to RESULTS.md (made with its header if missing); earlier runs stay."""
    if not path.exists():
        path.write_text("# Benchmark results\n\nWritten by `make bench` (`python -m bench.run`); one section per run, "
                        "newest last. Targets: " + "; ".join(TARGETS) + ".\n")
    with path.open("a") as out:
        out.write("\n" + section)


if __name__ == "__main__":
    sys.exit(main())
