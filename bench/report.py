"""The benchmark's report: the machine, the profile summary, and the dated section appended to
bench/RESULTS.md."""

from __future__ import annotations

import collections
import functools
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from bench.harness import ROOT


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


def _server_kind(opts) -> str:
    workers = getattr(opts, "workers", 1)
    return ("one `smsgw serve` process" if workers == 1 else
            f"`smsgw serve --workers {workers}` ({workers} node processes on the local Redis; CPU and RSS "
            "are the sum of the workers')")


def results_section(r: dict, opts) -> str:
    m, a, p, b = r["machine"], r["throughput"], r["paced"], r.get("bulk")
    ceiling, idle = r["ceiling"], r.get("idle")
    # End to end: the better of single sends and send_bulk (both through REST), named in the row.
    best = max((run for run in (a, b) if run and run["delivered_per_s"]), default=a,
               key=lambda run: run["delivered_per_s"])
    fraction = best["delivered_per_s"] / ceiling["round_trips_per_s"] if best["delivered_per_s"] else None
    how = f" ({'send_bulk' if best is b else 'single sends'})" if b else ""

    def met(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "**no**")

    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {_run_kind(opts)}",
        "",
        f"Machine: {m['nproc']} × {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}; commit {m['commit']}. Server: {_server_kind(opts)}, defaults "
        "(DB_POOL_SIZE 10) but GATEWAY_SEND_RATE_PER_MINUTE=0 and rate limits off; phones and senders in "
        "their own processes on the same cores. Load average (1/5/15 min) "
        f"{_load(r['load_before'])} before, {_load(r['load_after'])} after (other sessions share this machine).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| {TARGETS[0]} | {_num(best['delivered_per_s'])} delivered/s{how} | "
        f"{met(_ge(best['delivered_per_s'], 2000))} |",
        f"| {TARGETS[1]} | {_num(p['p99_accept_to_socket_ms'])} ms at {_num(p['paced_rate'])}/s | "
        f"{met(None if p['p99_accept_to_socket_ms'] is None else p['p99_accept_to_socket_ms'] < 50)} |",
        f"| {TARGETS[2]} | " + (f"{idle['kb_per_socket']} KB ({idle['online']:,} of {idle['sockets']:,} sockets up); "
                               f"ramp slope {_num(idle['kb_per_socket_slope'])} KB | "
                               f"{met(idle['kb_per_socket'] < 40 and idle['all_subscribed'])} |"
                               if idle else f"{'failed: ' + r['idle_error'] if r.get('idle_error') else 'not run'} | — |"),
        f"| {TARGETS[3]} | " + (f"{100 * fraction:.0f} % ({_num(best['delivered_per_s'])}{how} of "
                               f"{_num(ceiling['round_trips_per_s'])}/s) | {met(fraction >= 0.5)} |"
                               if fraction is not None else "— | — |"),
        "",
    ]
    for title, run in (("(a) saturated", a), ("(a) paced", p), ("(a) bulk", b)):
        if run is None:
            continue
        paced = f" paced at {run['paced_rate']:.0f}/s" if run["paced_rate"] else ""
        senders = (f"{run['bulk']} entries a `send_bulk` request, 4 requests at a time" if run.get("bulk")
                   else f"{opts.concurrency} concurrent senders{paced}")
        lines.append(
            f"- {title}: {run['messages']:,} messages over {opts.gateways} phones, {senders}: "
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
            + f"; the machine was {run['machine_busy_pct']} % busy (all processes, all cores); "
            f"server CPU {_num(run.get('server_cpu_ms_per_message'))} ms per message delivered.")
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
                      f"{prof['figures']['messages']:,} messages"
                      f"{' sent through send_bulk' if prof['figures'].get('bulk') else ''}, {_num(prof['figures']['delivered_per_s'])} "
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

