"""`GET /admin`: the operators' dashboard, served as one static page, and driven for real in
headless Chromium (tests/browser/dashboard.mjs, playwright-core against /usr/bin/chromium)."""

from __future__ import annotations

import functools
import json
import os
import tempfile
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tests.conftest import phone, wait_for

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's picture; by default the
# screenshot goes to a temporary file so a test run leaves the tree clean.
SCREENSHOT = Path(os.environ.get("DASHBOARD_SCREENSHOT") or Path(tempfile.gettempdir()) / "smsgw-dashboard.png")
# A device name is user input: the page must show it as text, never run it.
HOSTILE_NAME = 'Front desk <img src=x onerror="document.title=\'pwned\'"> & <b>co</b>'


async def test_admin_page_is_served_with_a_strict_content_security_policy(server):
    r = await server.http.get("/admin")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/admin/static/admin.js"></script>' in r.text
    for asset, kind in (("admin.js", "javascript"), ("chart.js", "javascript"), ("admin.css", "text/css")):
        static = await server.http.get(f"/admin/static/{asset}")
        assert static.status_code == 200 and kind in static.headers["content-type"], asset


async def test_admin_page_script_writes_no_html_from_data(server):
    script = "".join([(await server.http.get(f"/admin/static/{name}")).text for name in ("admin.js", "chart.js")])
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    assert "sessionStorage" in script and "localStorage" not in script


async def test_admin_static_files_outside_the_folder_are_not_served(server):
    assert (await server.http.get("/admin/static/../app.py")).status_code == 404
    assert (await server.http.get("/admin/static/%2e%2e/app.py")).status_code == 404


def _browser_ready() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "tests/browser/node_modules is missing (cd tests/browser && npm ci)"
    return None


async def test_operator_disables_a_gateway_from_the_dashboard(server):
    missing = _browser_ready()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    admin_key = server.client_key("admin", name="operator")
    sms_key = server.client_key("sms")
    gw_key = await server.register("lobby-phone-1", name=HOSTILE_NAME)
    await server.register("warehouse-phone-2", name="Warehouse")  # offline, for the picture
    async with phone(server, gw_key) as p:
        await p.perform("heartbeat", battery_level=82, signal_strength=3, messages_in_queue=0)
        await wait_for(lambda: server.sql("SELECT 1 FROM gateways WHERE device_id = 'lobby-phone-1'"
                                          " AND battery_level = 82"))
        SCREENSHOT.parent.mkdir(exist_ok=True)
        env = {**os.environ, "URL": server.url, "KEY": admin_key, "DEVICE_ID": "lobby-phone-1",
               "NAME": HOSTILE_NAME, "SCREENSHOT": str(SCREENSHOT), "CHROMIUM": CHROMIUM,
               "TRAFFIC_SENT": "5", "TRAFFIC_RECEIVED": "2"}
        browser = functools.partial(trio.run_process, ["node", "dashboard.mjs"], cwd=BROWSER_DIR, env=env,
                                    check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                process = await nursery.start(browser)
                stdout = StepReader(process.stdout)
                errors: list[bytes] = []
                nursery.start_soon(_collect, process.stderr, errors)
                await stdout.until("gateway online")
                await _traffic(server, sms_key, p, sent=5, received=2)  # the page is watching
                steps = await stdout.rest()
    output = "\n".join(steps) + b"".join(errors).decode()
    assert process.returncode == 0, output
    assert [json.loads(line)["step"] for line in steps if line.startswith("{")] == [
        "loaded", "connected", "gateway online", "chart shows traffic", "name shown as text",
        "priority changed", "gateway inactive", "screenshot"], output
    assert server.sql("SELECT active, priority FROM gateways WHERE device_id = 'lobby-phone-1'") == [
        {"active": False, "priority": 5}]
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")


async def _traffic(server, key: str, p, *, sent: int, received: int) -> None:
    """Messages out through the phone (reported delivered) and in from it."""
    for i in range(sent):
        await server.send(key, message=f"Your table is ready ({i + 1})")
    for _ in range(sent):
        sms = await p.next_sms()
        await p.report(sms["message_id"], "delivered")
    for i in range(received):
        await p.perform("message_received", sender="+14155550123", message=f"On my way {i + 1}",
                        timestamp=f"2025-10-19T10:3{i}:00Z")


class StepReader:
    """The script's stdout, one JSON line per step."""

    def __init__(self, stream) -> None:
        self.stream, self.buffer, self.lines = stream, b"", []

    async def until(self, step: str) -> None:
        while not any(f'"step":"{step}"' in line for line in self.lines):
            if not await self._read():
                raise AssertionError(f"the browser script ended before {step!r}: {self.lines}")

    async def rest(self) -> list[str]:
        while await self._read():
            pass
        return self.lines

    async def _read(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines += [line.decode() for line in complete]
        return bool(chunk)


async def _collect(stream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some(65536):
        into.append(chunk)
