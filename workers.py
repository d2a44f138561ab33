"""`smsgw serve --workers N`: one node per core on one machine.

A Python process computes on one core at a time. With `--workers N` this process starts N
worker processes, each a whole node (its own actors, database pool and phones), all accepting
from one listening socket made here (the kernel spreads the connections over them) and sharing
wake-ups and presence through Redis, as nodes on separate machines do. This process only
supervises: it makes the database and the secret ready once, starts the workers, starts again
one that dies (after a backoff), and passes SIGTERM/SIGINT on, waiting for each to finish.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys

import attrs
import trio

from config import ConfigError, Settings, ensure_secret

__all__ = ["LISTEN_FD_VARIABLE", "check_workers", "run_workers"]

log = logging.getLogger("smsgw.workers")

LISTEN_FD_VARIABLE = "SMSGW_LISTEN_FD"  # set by this process for its workers: the shared socket
RESTART_BASE = 1.0       # seconds before starting a dead worker again, doubling up to 30 s
STEADY_AFTER = 60.0      # a worker that ran this long starts again after RESTART_BASE
STOP_GRACE = 35.0        # a worker's own graceful shutdown is 30 s; then it is killed


def check_workers(settings: Settings) -> None:
    """ConfigError unless `settings.workers` can run with these settings."""
    if not 1 <= settings.workers <= 256:
        raise ConfigError("WORKERS (--workers)", f"must be between 1 and 256, got {settings.workers}")
    if settings.workers > 1 and not settings.redis_url:
        raise ConfigError("WORKERS (--workers)", "more than one worker needs REDIS_URL: the workers "
                                                 "share wake-ups and phone presence through it")


def run_workers(settings: Settings) -> int:
    """Run `settings.workers` nodes on this machine until SIGTERM/SIGINT; the exit code."""
    import supervisor
    from store.migrate import apply_migrations

    workers = settings.workers
    settings = ensure_secret(settings)  # one secret for all (OTP codes are checked by any worker)
    dsn = supervisor.database_url(settings)  # the embedded database, if any, starts once, here
    applied = apply_migrations(dsn)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    listener = socket.create_server((settings.host, settings.port), backlog=2048)
    listener.set_inheritable(True)
    host, port = listener.getsockname()[:2]
    base = (settings.node_id or secrets.token_hex(3))[:56]
    env = {**os.environ, "DATABASE_URL": dsn, "SECRET_KEY_BASE": settings.secret_key_base,
           "HOST": str(host), "PORT": str(port), LISTEN_FD_VARIABLE: str(listener.fileno())}
    pool = _Workers(argv=[sys.executable, "-c", "import sys, cli; sys.exit(cli.main(['serve']))"],
                    envs=[{**env, "NODE_ID": f"{base}-{i}"} for i in range(workers)],
                    fd=listener.fileno())
    log.info("serving on http://%s:%d with %d workers", host, port, workers)
    try:
        trio.run(pool.run)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    return 0


@attrs.define(eq=False)
class _Workers:
    argv: list[str]
    envs: list[dict[str, str]]
    fd: int
    stopping: bool = False
    processes: dict[int, subprocess.Popen] = attrs.Factory(dict)

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for index in range(len(self.envs)):
                    nursery.start_soon(self._keep, index)
                async for signum in signals:
                    log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.processes))
                    self.stopping = True
                    for process in list(self.processes.values()):
                        if process.returncode is None:
                            process.send_signal(signal.SIGTERM)
                    break
                with trio.move_on_after(STOP_GRACE) as grace:
                    while any(p.returncode is None for p in self.processes.values()):
                        await trio.sleep(0.1)
                if grace.cancelled_caught:
                    log.warning("workers still running after %.0f s: killed", STOP_GRACE)
                nursery.cancel_scope.cancel()

    async def _keep(self, index: int) -> None:
        """Worker `index`, started again whenever it ends before we stop."""
        delay = RESTART_BASE
        while not self.stopping:
            started = trio.current_time()
            process = self._start(index)
            self.processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            try:
                code = await _wait(process)
            finally:
                if process.returncode is None:  # cancelled: the grace period is over
                    process.kill()
                    process.wait()
            if self.stopping:
                return
            delay = RESTART_BASE if trio.current_time() - started > STEADY_AFTER else min(delay * 2, 30.0)
            log.error("worker %d (pid %d) ended with code %s; starting it again in %.0f s",
                      index, process.pid, code, delay)
            await trio.sleep(delay)

    def _start(self, index: int) -> subprocess.Popen:
        # Started from this thread, the one that lives as long as this process: the kernel's
        # parent-death signal follows the thread that forked, and a worker started from one of
        # trio's cached threads (`trio.lowlevel.open_process`) got SIGTERM when that thread
        # retired, ten idle seconds later. A session of its own: Ctrl-C in a terminal reaches
        # this process alone, which then asks each worker once (a second signal would end a
        # worker's graceful shutdown).
        return subprocess.Popen(self.argv, env=self.envs[index], pass_fds=(self.fd,), start_new_session=True,
                                preexec_fn=functools.partial(_die_with_parent, os.getpid()))


async def _wait(process: subprocess.Popen) -> int:
    """The exit code of `process`, waited for without blocking the event loop."""
    try:
        pidfd = os.pidfd_open(process.pid)  # Linux: readable once the process has ended
    except (AttributeError, OSError):
        while process.poll() is None:
            await trio.sleep(0.2)
        return process.returncode
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return process.wait()


def _die_with_parent(parent: int) -> None:
    """In a new worker, before it runs: SIGTERM when this process dies (Linux), so a supervisor
    killed with -9 leaves no worker holding the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the workers outlive a killed supervisor
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)
