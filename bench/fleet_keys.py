"""Registering simulated phones, and the file of their gateway keys that lets a rerun reuse them."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import httpx
import trio



log = logging.getLogger("smsgw.simulator")
DEFAULT_KEYS_PATH = Path("var/simulator-keys.json")


class RegistrationFailed(Exception):
    """The server refused a registration for a reason a retry will not fix."""


async def register_phones(url: str, gateways: int, *, prefix: str, keys_path: Path,
                          concurrency: int = 32) -> list[tuple[str, str]]:
    """Register (or rotate the key of) `{prefix}-0000` ... ; return [(device_id, api_key)].

    A device with a stored key re-registers with it as Bearer, which rotates the key. A
    device_id taken by someone else (409 and no stored key that opens it) gets a new suffix,
    with a warning. The key file is rewritten at the end, even when interrupted.
    """
    book = _load_keys(keys_path)
    limiter = trio.CapacityLimiter(concurrency)
    slots = [f"{prefix}-{i:04d}" for i in range(gateways)]

    async def one(http: httpx.AsyncClient, index: int, slot: str) -> None:
        async with limiter:
            entry = book.get(slot) or {}
            device_id, key = entry.get("device_id", slot), entry.get("api_key")
            answer = await _register(http, device_id, f"Simulated phone {index}", key)
            if answer is None:
                fresh = f"{slot}-{random.getrandbits(24):06x}"
                log.warning("%s is registered already and %s; registering as %s instead", device_id,
                            "its stored key no longer opens it" if key else "no key for it is stored", fresh)
                answer = await _register(http, fresh, f"Simulated phone {index}", None)
                if answer is None:
                    raise RegistrationFailed(f"{fresh}: 409 for a fresh device_id")
            book[slot] = {"device_id": answer["device_id"], "api_key": answer["api_key"]}

    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async with trio.open_nursery() as nursery:
                for index, slot in enumerate(slots):
                    nursery.start_soon(one, http, index, slot)
    finally:
        _save_keys(keys_path, book)
    return [(book[s]["device_id"], book[s]["api_key"]) for s in slots]


def stored_phones(keys_path: Path, gateways: int, *, prefix: str) -> list[tuple[str, str]]:
    """The first `gateways` phones of `prefix` in the key file, as registered earlier."""
    book = _load_keys(keys_path)
    slots = [f"{prefix}-{i:04d}" for i in range(gateways)]
    missing = [s for s in slots if s not in book]
    if missing:
        raise RegistrationFailed(f"{len(missing)} phones of {prefix!r} have no stored key in {keys_path}")
    return [(book[s]["device_id"], book[s]["api_key"]) for s in slots]


async def _register(http: httpx.AsyncClient, device_id: str, name: str, key: str | None) -> dict | None:
    """POST /register, waiting out 429s (within 10 minutes); None on 409."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with trio.fail_after(600):
        while True:
            r = await http.post("/api/v1/gateway/register", json={"device_id": device_id, "name": name},
                                headers=headers)
            if r.status_code == 201:
                return r.json()
            if r.status_code == 409:
                return None
            if r.status_code != 429:
                raise RegistrationFailed(f"{device_id}: HTTP {r.status_code} {r.text[:200]}")
            wait = float(r.headers.get("Retry-After", "1") or 1)
            log.warning("registration rate-limited; waiting %.0f s (RATE_LIMIT_REGISTER_PER_MINUTE)", wait)
            await trio.sleep(max(0.2, wait))


def _load_keys(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    return data.get("phones", {}) if isinstance(data, dict) else {}


def _save_keys(path: Path, book: dict[str, dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"phones": book}, indent=1, sort_keys=True))
    tmp.chmod(0o600)
    tmp.replace(path)
