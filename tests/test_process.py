"""The real `smsgw` process: serve over TCP, SIGTERM, kill -9, configuration errors, CLI."""

import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import trio

from tests.conftest import clean, node_env, phone, sql

SMSGW = os.path.join(os.path.dirname(sys.executable), "smsgw")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, database_url: str, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **node_env(database_url, PORT=str(self.port), **env)}
        self.proc = None

    async def start(self):
        self.proc = subprocess.Popen([SMSGW, "serve"], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        async with httpx.AsyncClient() as http:
            with trio.fail_after(20):
                while True:
                    try:
                        if (await http.get(self.url + "/up")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    assert self.proc.poll() is None, self.proc.stdout.read().decode()
                    await trio.sleep(0.1)

    async def wait(self, timeout: float = 20) -> int:
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        return self.proc.returncode


def cli(database_url: str, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([SMSGW, *args], env={**os.environ, **node_env(database_url, **env)},
                          capture_output=True, text=True, timeout=60)


async def test_sigterm_exits_cleanly_and_loses_no_accepted_row(database_url):
    clean(database_url)
    key = json.loads(cli(database_url, "keys", "create", "--name", "t", "--json").stdout)["api_key"]
    node = Process(database_url, LOG_LEVEL="INFO")
    await node.start()
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=node.url) as http:
        async def sender():
            while True:
                try:
                    r = await http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": "m"},
                                        headers={"Authorization": f"Bearer {key}"})
                except httpx.TransportError:
                    return
                if r.status_code == 202:
                    accepted.append(r.json()["message_id"])
                elif r.status_code >= 500:
                    return

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(sender)
            await trio.sleep(1.0)
            node.proc.send_signal(signal.SIGTERM)
            assert await node.wait() == 0
    stored = {r["message_id"] for r in sql(database_url, "SELECT message_id FROM messages")}
    assert accepted and set(accepted) <= stored


async def test_sigterm_tells_phones_to_reconnect(database_url):
    clean(database_url)
    node = Process(database_url)
    await node.start()
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/api/v1/gateway/register", json={"device_id": "d1", "name": "p"})
        key = r.json()["api_key"]

        class Target:
            ws_url = node.url.replace("http", "ws") + "/cable"

        async with phone(Target, key) as p:
            node.proc.send_signal(signal.SIGTERM)
            frame = await p.next(timeout=5)
            assert frame == {"type": "disconnect", "reason": "server_restart", "reconnect": True}
    assert await node.wait() == 0


async def test_restart_after_kill_finds_queued_and_in_flight_messages(database_url):
    clean(database_url)
    key = json.loads(cli(database_url, "keys", "create", "--name", "t", "--json").stdout)["api_key"]
    first = Process(database_url)
    await first.start()
    async with httpx.AsyncClient(base_url=first.url) as http:
        gw = (await http.post("/api/v1/gateway/register", json={"device_id": "d1", "name": "p"})).json()["api_key"]

        class Target:
            ws_url = first.url.replace("http", "ws") + "/cable"

        async with phone(Target, gw) as p:
            r = await http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": "in flight"},
                                headers={"Authorization": f"Bearer {key}"})
            in_flight = r.json()["message_id"]
            assert (await p.next_sms())["message_id"] == in_flight
            first.proc.kill()  # kill -9 while the message is dispatched and unreported
            await first.wait()
    assert sql(database_url, "SELECT status FROM messages")[0]["status"] == "dispatched"
    second = Process(database_url)
    await second.start()
    async with httpx.AsyncClient(base_url=second.url) as http:
        r = await http.post("/api/v1/sms/send", json={"to": "+14155552671", "message": "queued"},
                            headers={"Authorization": f"Bearer {key}"})
        queued = r.json()["message_id"]

        class Target2:
            ws_url = second.url.replace("http", "ws") + "/cable"

        async with phone(Target2, gw) as p:
            got = {(await p.next_sms(timeout=10))["message_id"] for _ in range(2)}
            assert got == {in_flight, queued}
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait() == 0


def test_bad_setting_is_one_line_and_exit_code_2(database_url):
    result = cli(database_url, "serve", DEFAULT_COUNTRY_CODE="ZZ")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DEFAULT_COUNTRY_CODE" in lines[0] and "Traceback" not in result.stderr
    result = cli(database_url, "serve", PORT="99999")
    assert result.returncode == 2 and "PORT" in result.stderr


def test_keys_cli_create_list_revoke(database_url):
    clean(database_url)
    created = json.loads(cli(database_url, "keys", "create", "--name", "ops", "--admin", "--json").stdout)
    assert created["api_key"].startswith("api_live_") and "admin" in created["scopes"]
    listing = cli(database_url, "keys", "list").stdout
    assert created["prefix"] in listing and created["api_key"] not in listing
    assert cli(database_url, "keys", "revoke", created["prefix"]).returncode == 0
    assert "revoked" in cli(database_url, "keys", "list").stdout
    bad = cli(database_url, "keys", "create", "--name", "x", "--scopes", "sms,root")
    assert bad.returncode == 2 and "root" in bad.stderr


def test_seed_prints_an_admin_key_and_a_gateway_key_once(database_url):
    clean(database_url)
    out = cli(database_url, "seed").stdout
    assert "api_live_" in out and "gw_live_" in out
    assert sql(database_url, "SELECT count(*) AS n FROM gateways")[0]["n"] == 1


def test_migrate_is_idempotent(database_url):
    assert cli(database_url, "migrate").stdout.strip() == "database is up to date"
