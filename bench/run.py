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
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.echo_ceiling import measure_ceiling, spawn_echo_server
from bench.harness import (ADMIN_URL, PY_SPY, ROOT, Fleet, Server, _CpuWatch, _max_message_row, _Peak,
                           _sample_db_backends, _sample_rss, _steady_rss, create_client_key, create_database,
                           drop_database, match_latencies, raise_nofile, running_fleet, running_server,
                           server_env, wait_delivered)
from bench.report import append_results, machine_facts, profile_summary, results_section
from bench.senders import send_messages
from bench.simulator import register_phones


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
    p.add_argument("--bulk", type=int, default=500, metavar="N",
                   help="then the same messages through send_bulk, N entries a request (0 skips)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (`smsgw serve --workers`, on the local Redis; default 1: the targets' setup)")
    p.add_argument("--paced-rate", type=float,
                   help="the paced run's rate (default half the saturated run's delivered rate)")
    p.add_argument("--ceiling-seconds", type=float, default=5.0)
    p.add_argument("--profile-messages", type=int, help="messages in the profiled run (default a quarter)")
    p.add_argument("--profile-bulk", action="store_true", help="profile the send_bulk run, not single sends")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
    p.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    return p



async def run_bench(opts: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    results: dict = {"machine": await trio.to_thread.run_sync(machine_facts, ADMIN_URL), "work_dir": str(work),
                     "load_before": os.getloadavg()}
    dsn = await trio.to_thread.run_sync(create_database)
    env = server_env(dsn, work, workers=opts.workers)
    try:
        client_key = await trio.to_thread.run_sync(create_client_key, env)
        async with running_server(env, work / "server-a.log") as server:
            async with running_fleet(server.url, opts.gateways, work, prefix="bench") as fleet:
                results["throughput"] = await scenario_throughput(server, fleet, dsn, client_key, opts)
                rate = opts.paced_rate or min(1_000.0, 0.5 * (results["throughput"]["delivered_per_s"] or 0)) or 100.0
                count = max(500, min(opts.messages // 4, int(rate * 15)))
                results["paced"] = await scenario_throughput(server, fleet, dsn, client_key, opts,
                                                             count=count, rate=rate)
                if opts.bulk:
                    results["bulk"] = await scenario_throughput(server, fleet, dsn, client_key, opts,
                                                                bulk=opts.bulk)
                if opts.profile:
                    results["profile"] = await scenario_profile(server, fleet, dsn, client_key, opts, work)
            stats = fleet.stats()
            for name in ("throughput", "paced", "bulk"):
                if name in results:
                    results[name].update(match_latencies(results[name].pop("accepted_at"), stats))
            results["fleet"] = {k: stats.get(k, 0) for k in ("duplicates", "connects", "held_reports")}
        results["ceiling"] = await scenario_ceiling(opts)
        if opts.idle_sockets:
            try:
                async with running_server(env, work / "server-c.log") as server:
                    results["idle"] = await scenario_idle(server, opts.idle_sockets, work,
                                                          deadline=opts.idle_deadline,
                                                          connect_concurrency=opts.idle_connect_concurrency)
            except Exception as exc:  # noqa: BLE001 - (a) and (b) are still worth writing down
                results["idle_error"] = f"{type(exc).__name__}: {str(exc)[:200]} (see the fleet's log above)"
    finally:
        if not opts.keep_db:
            await trio.to_thread.run_sync(drop_database, dsn)
    results["load_after"] = os.getloadavg()
    return results


BULK_SENDERS = 4  # concurrent send_bulk requests


# --- Scenarios ------------------------------------------------------------------------------

async def scenario_throughput(server: "Server", fleet: "Fleet", dsn: str, key: str, opts, *,
                              count: int | None = None, rate: float | None = None, bulk: int = 0) -> dict:
    """Send `count` messages (as fast as the senders go, or paced at `rate`/s; through
    `send_bulk` in requests of `bulk` entries if given), wait until all are delivered (or
    failed) in the database; accepted/s, delivered/s, RSS."""
    count = count or opts.messages
    floor = await trio.to_thread.run_sync(_max_message_row, dsn)
    peak = _Peak(server.rss())
    cpu = _CpuWatch.start({"server": server.pid, "phones": fleet.process.pid, "senders": os.getpid()})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_rss, server, peak)
        wall_start = time.time()
        sent = await send_messages(server.url, key, count, rate=rate, bulk=bulk,
                                   concurrency=BULK_SENDERS if bulk else opts.concurrency)
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
        "messages": count, "paced_rate": rate, "bulk": bulk, "accepted": len(sent.accepted), "errors": dict(sent.errors),
        "accepted_per_s": round(len(sent.accepted) / sent.elapsed, 1) if sent.elapsed else None,
        "delivered": done["delivered"], "failed": done["failed"], "timed_out": done["timed_out"],
        "delivered_per_s": round(done["delivered"] / span, 1) if span > 0 else None,
        "rss_before_mb": round(peak.first / 2**20, 1), "rss_peak_mb": round(peak.value / 2**20, 1),
        "rss_after_mb": round(server.rss() / 2**20, 1), "accepted_at": sent.accepted,
        "cpu_pct": cpu_pct, "machine_busy_pct": machine_busy,
        # The server's CPU per message delivered: steadier than rates on a shared machine.
        "server_cpu_ms_per_message": round(1000 * cpu.seconds["server"] / done["delivered"], 2)
        if done["delivered"] else None,
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
            figures = await scenario_throughput(server, fleet, dsn, key, opts, count=opts.profile_messages or max(1_000, opts.messages // 4),
                                                bulk=opts.bulk if opts.profile_bulk else 0)
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


if __name__ == "__main__":
    sys.exit(main())
