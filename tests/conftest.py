"""Test harness: a database of this run's own on the real PostgreSQL, and real nodes.

Each pytest run creates `smsgw_test_<pid>_<random>` and drops it at the end, so runs never see
each other's rows. A test that needs a server starts a real node in its own Trio nursery
(`supervisor.serve`, Hypercorn on an ephemeral port) and talks to it over TCP.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import asynccontextmanager
from typing import AsyncIterator

import attrs
import httpx
import psycopg
import pytest
import trio
from psycopg.rows import dict_row
from trio_websocket import open_websocket_url

import supervisor
from config import load_settings
from store import keys
from store.migrate import apply_migrations
from web import cable_protocol as cable

ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def database_url() -> str:
    name = f"smsgw_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    apply_migrations(url)
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clean(url: str) -> None:
    """Empty every table but the migration record."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")]
        conn.execute("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE")


def sql(url: str, query: str, params: tuple = ()) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def node_env(database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url, "HOST": "127.0.0.1", "PORT": "0", "SMSGW_ENV": "test",
        "SECRET_KEY_BASE": "test-secret-key-base-0123456789", "DEFAULT_COUNTRY_CODE": "US",
        "RATE_LIMIT_PER_KEY_PER_MINUTE": "0", "RATE_LIMIT_REGISTER_PER_MINUTE": "0",
        "GATEWAY_SEND_RATE_PER_MINUTE": "0", "LOG_LEVEL": "WARNING",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@attrs.define
class Node:
    """A running node as a test sees it: its URL, an HTTP client, its in-process handles."""

    url: str
    http: httpx.AsyncClient
    database_url: str
    shutdown: trio.Event
    node: object = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/cable"

    def client_key(self, *scopes: str, name: str = "test") -> str:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            key, _ = keys.create_client_key(conn, name, scopes or ("sms", "otp"))
            conn.commit()
        return key

    async def register(self, device_id: str, name: str = "Phone") -> str:
        r = await self.http.post("/api/v1/gateway/register", json={"device_id": device_id, "name": name})
        assert r.status_code == 201, r.text
        return r.json()["api_key"]

    async def send(self, key: str, to: str = "+14155552671", message: str = "hello", **extra) -> dict:
        r = await self.http.post("/api/v1/sms/send", json={"to": to, "message": message, **extra},
                                 headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
        return r.json()

    async def status(self, key: str, message_id: str) -> dict:
        r = await self.http.get(f"/api/v1/sms/status/{message_id}", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def sql(self, query: str, params: tuple = ()) -> list[dict]:
        return sql(self.database_url, query, params)


@asynccontextmanager
async def running_node(database_url: str, **overrides: str) -> AsyncIterator[Node]:
    settings = load_settings(node_env(database_url, **overrides))
    shutdown = trio.Event()
    holder: dict = {}
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(_serve, settings, database_url, shutdown, holder)
        url = binds[0]
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield Node(url=url, http=http, database_url=database_url, shutdown=shutdown, node=holder.get("node"))
        shutdown.set()


async def _serve(settings, dsn, shutdown, holder, task_status=trio.TASK_STATUS_IGNORED):
    await supervisor.serve(settings, dsn=dsn, shutdown=shutdown, install_signals=False,
                           node_ready=lambda node: holder.update(node=node), task_status=task_status)


@pytest.fixture
async def server(database_url) -> AsyncIterator[Node]:
    clean(database_url)
    async with running_node(database_url) as node:
        yield node


@attrs.define
class Phone:
    """A gateway phone speaking Action Cable over a real WebSocket."""

    ws: object
    identifier: str

    async def next(self, timeout: float = 5.0, *, skip_pings: bool = True) -> dict:
        with trio.fail_after(timeout):
            while True:
                frame = json.loads(await self.ws.get_message())
                if skip_pings and frame.get("type") == "ping":
                    continue
                return frame

    async def next_sms(self, timeout: float = 5.0) -> dict:
        while True:
            frame = await self.next(timeout)
            if "message" in frame and isinstance(frame["message"], dict):
                return frame["message"]

    async def perform(self, action: str, **data) -> None:
        await self.ws.send_message(json.dumps({
            "command": "message", "identifier": self.identifier, "data": json.dumps({"action": action, **data})}))

    async def report(self, message_id: str, status: str, **extra) -> None:
        await self.perform("delivery_report", message_id=message_id, status=status, **extra)


def identifier_for(key: str) -> str:
    return json.dumps({"channel": "GatewayChannel", "api_key_digest": cable.api_key_digest(key)})


@asynccontextmanager
async def phone(node: Node, key: str, *, subscribe: bool = True) -> AsyncIterator[Phone]:
    async with open_websocket_url(f"{node.ws_url}?api_key={key}", subprotocols=[cable.SUBPROTOCOL]) as ws:
        p = Phone(ws=ws, identifier=identifier_for(key))
        assert (await p.next())["type"] == "welcome"
        if subscribe:
            await ws.send_message(json.dumps({"command": "subscribe", "identifier": p.identifier}))
            confirm = await p.next()
            assert confirm == {"identifier": p.identifier, "type": "confirm_subscription"}, confirm
        yield p


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` (a sync callable) until it is truthy; for observing the database."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
