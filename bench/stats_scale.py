"""`GET /api/v1/admin/stats` and the gateway list with a million message rows.

Stats are answered from counters kept as events happen and from the queue's partial indexes,
never by scanning the messages table; this measures that claim. `python -m bench.stats_scale
[--rows 1000000]` fills a fresh database with that many messages (mostly delivered, some
queued, dispatched, failed and inbound), starts a server on it, and times the admin reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from bench.harness import create_database, drop_database, server_env

__all__ = ["main"]


def fill(dsn: str, rows: int, gateways: int = 200) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO gateways (device_id, name) SELECT 'g' || i, 'Gateway ' || i"
                     " FROM generate_series(1, %s) AS i", (gateways,))
        conn.execute(
            "INSERT INTO messages (message_id, direction, status, phone_number, body, gateway_id,"
            " sent_at, delivered_at, received_at)"
            " SELECT 'msg_fill' || i,"
            " CASE WHEN i %% 10 = 0 THEN 'inbound' ELSE 'outbound' END,"
            " CASE WHEN i %% 10 = 0 THEN 'received' WHEN i %% 97 = 0 THEN 'queued'"
            "      WHEN i %% 89 = 0 THEN 'dispatched' WHEN i %% 83 = 0 THEN 'failed' ELSE 'delivered' END,"
            " '+1415555' || lpad((i %% 10000)::text, 4, '0'), 'fill', 1 + i %% %s,"
            " now(), now(), CASE WHEN i %% 10 = 0 THEN now() - (i || ' seconds')::interval END"
            " FROM generate_series(1, %s) AS i",
            (gateways, rows),
        )
        conn.execute("UPDATE messages SET gateway_id = NULL WHERE status = 'queued'")
        conn.execute("ANALYZE messages")
    return time.perf_counter() - started


def timed(http: httpx.Client, path: str, key: str, n: int = 50) -> dict:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        r = http.get(path, headers={"Authorization": f"Bearer {key}"})
        samples.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    samples.sort()
    return {"path": path, "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stats_scale")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--port", type=int, default=3917)
    opts = p.parse_args(argv)
    dsn = create_database()
    try:
        work = Path(tempfile.mkdtemp(prefix="smsgw-stats-"))
        env = {**server_env(dsn, work), "PORT": str(opts.port), "HOST": "127.0.0.1"}
        subprocess.run([sys.executable, "-m", "cli", "migrate"], env=env, check=True, capture_output=True)
        fill_s = fill(dsn, opts.rows)
        key = json.loads(subprocess.run([sys.executable, "-m", "cli", "keys", "create", "--name", "stats",
                                         "--admin", "--json"], env=env, check=True, capture_output=True,
                                        text=True).stdout)["api_key"]
        server = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{opts.port}", timeout=30) as http:
                for _ in range(200):
                    try:
                        if http.get("/up").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.1)
                results = [timed(http, "/api/v1/admin/stats", key),
                           timed(http, "/api/v1/admin/gateways?limit=100", key),
                           timed(http, "/api/v1/sms/received?limit=50", key, n=20)]
        finally:
            server.terminate()
            server.wait(timeout=20)
        print(json.dumps({"rows": opts.rows, "fill_seconds": round(fill_s, 1), "reads": results}, indent=2))
    finally:
        drop_database(dsn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
