"""Steady load: single sends offered at fixed rates (open loop), one after another.

Bursts flatter a gateway; a steady stream shows whether it keeps up. For each rate the senders
offer `rate` messages a second for `--seconds`, whatever the server answers (open loop: the
schedule does not wait for slow answers beyond the senders' own concurrency); meanwhile the
backlog (queued + dispatched messages) is sampled every second. Reported per rate: offered and
accepted/s, delivered/s over the window, the backlog's slope (messages/s it grows by; about 0
means it keeps up), and p50/p99 from each 202 to its `send_sms` on a phone's socket.
`python -m bench.steady [--rates 250,500,1000] [--seconds 60]` prints the figures as JSON;
with `--results PATH` it also appends them to that file as a section (`make bench` does, to
bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import trio

from bench.harness import (ADMIN_URL, create_client_key, create_database, drop_database, match_latencies, running_fleet,
                           running_server, server_env)
from bench.senders import send_messages
from bench.report import append_results, machine_facts
from bench.run import least_squares_slope

__all__ = ["main"]


async def _sample_backlog(dsn: str, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            n = conn.execute("SELECT count(*) FROM messages WHERE status IN ('queued', 'dispatched')").fetchone()[0]
            samples.append((time.monotonic() - started, n))
            await trio.sleep(1.0)


def _delivered(dsn: str, since: float) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM messages WHERE status = 'delivered'"
                            " AND delivered_at >= to_timestamp(%s)", (since,)).fetchone()[0]


async def measure(opts) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="smsgw-steady-"))
    dsn = create_database()
    results = []
    accepted_at: list[dict[str, float]] = []
    try:
        env = server_env(dsn, work, workers=opts.workers)
        key = create_client_key(env)
        async with running_server(env, work / "server.log") as server:
            async with running_fleet(server.url, opts.gateways, work, prefix="steady") as fleet:
                for rate in opts.rates:
                    samples: list[tuple[float, int]] = []
                    wall_start = time.time()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_sample_backlog, dsn, samples)
                        sent = await send_messages(server.url, key, int(rate * opts.seconds),
                                                   concurrency=opts.concurrency, rate=rate)
                        nursery.cancel_scope.cancel()
                    window = time.time() - wall_start
                    delivered = await trio.to_thread.run_sync(_delivered, dsn, wall_start)
                    slope = least_squares_slope([(t, float(n)) for t, n in samples])
                    accepted_at.append(sent.accepted)
                    results.append({
                        "offered_per_s": rate, "accepted_per_s": round(len(sent.accepted) / window, 1),
                        "delivered_per_s_in_window": round(delivered / window, 1),
                        "backlog_start": samples[0][1] if samples else None,
                        "backlog_end": samples[-1][1] if samples else None,
                        "backlog_growth_per_s": None if slope is None else round(slope, 1),
                        "errors": dict(sent.errors),
                    })
                    # let the backlog drain before the next rate
                    with trio.move_on_after(120):
                        while samples and (await trio.to_thread.run_sync(_backlog, dsn)) > 0:
                            await trio.sleep(1)
                    # Each rate starts from a vacuumed table, as autovacuum keeps it (it is off
                    # on some machines, this one included; every message leaves three dead rows).
                    await trio.to_thread.run_sync(_vacuum, dsn)
            stats = fleet.stats()  # the phones' own record, written when their process ends
        for result, accepted in zip(results, accepted_at):
            latency = match_latencies(accepted, stats)
            result["p50_accept_to_socket_ms"] = latency["p50_accept_to_socket_ms"]
            result["p99_accept_to_socket_ms"] = latency["p99_accept_to_socket_ms"]
    finally:
        drop_database(dsn)
    return results


def _vacuum(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE messages")


def _backlog(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM messages WHERE status IN ('queued', 'dispatched')").fetchone()[0]


def results_section(opts, results: list[dict], machine: dict) -> str:
    """The run as a RESULTS.md section: one row per offered rate, and whether each held the
    steady-load goal (no growing backlog, p99 from 202 to the socket under 50 ms)."""
    m = machine
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC — steady load, open loop"
        f" (`python -m bench.steady --rates {','.join(f'{r:g}' for r in opts.rates)} --seconds {opts.seconds:g}`)",
        "",
        f"Machine: {m['nproc']} × {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, PostgreSQL "
        f"{m['postgresql']}; commit {m['commit']}. Server: {opts.workers} process(es), rate limits off; "
        f"{opts.gateways} simulated phones and {opts.concurrency} senders in their own processes on the same cores.",
        "",
        "| offered/s | accepted/s | delivered/s | backlog start → end | backlog growth/s | p50 / p99 202 → socket | errors | held |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p99 = r["p99_accept_to_socket_ms"]
        growth = r["backlog_growth_per_s"]
        # "No growing backlog": it grows by under 1 % of the offered rate a second.
        held = (p99 is not None and p99 < 50 and growth is not None and growth < 0.01 * r["offered_per_s"]
                and not r["errors"])
        lines.append(
            f"| {r['offered_per_s']:,.0f} | {r['accepted_per_s']:,.1f} | {r['delivered_per_s_in_window']:,.1f} | "
            f"{r['backlog_start']} → {r['backlog_end']} | {growth} | {r['p50_accept_to_socket_ms']} / {p99} ms | "
            f"{sum(r['errors'].values()) or 'none'} | {'yes' if held else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.steady")
    p.add_argument("--rates", default="250,500,1000", help="comma list of messages/s to offer")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--gateways", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="server processes (`smsgw serve --workers`)")
    p.add_argument("--results", help="append the figures to this file (RESULTS.md) as a section")
    opts = p.parse_args(argv)
    opts.rates = [float(r) for r in opts.rates.split(",")]
    results = trio.run(measure, opts)
    print(json.dumps(results, indent=2))
    if opts.results:
        append_results(Path(opts.results), results_section(opts, results, machine_facts(ADMIN_URL)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
