"""Bearer keys: who is calling, and may they? 401 for no, unknown or revoked key; 403 for a key
of the wrong kind or without the scope. Client keys are rate limited here, once per request."""

from __future__ import annotations

from quart import current_app, g, request

from store import gateways as gateways_store
from store import keys as keys_store
from store.keys import ApiKey
from web.errors import ApiError

__all__ = ["bearer_key", "require_client", "require_gateway"]


def bearer_key() -> str | None:
    """The key in `Authorization: Bearer …`, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _lookup() -> ApiKey:
    presented = bearer_key()
    if presented is None:
        raise ApiError(401, "Missing API key: send Authorization: Bearer <key>")
    if not presented.startswith((keys_store.CLIENT_PREFIX, keys_store.GATEWAY_PREFIX)) or len(presented) > 200:
        raise ApiError(401, "Invalid API key")
    key = await current_app.config["NODE"].keys.lookup(presented)
    if key is None:
        raise ApiError(401, "Invalid or revoked API key")
    return key


async def require_client(scope: str) -> ApiKey:
    """The calling client key, which must hold `scope` (admin holds every scope)."""
    key = await _lookup()
    if key.kind != "client":
        raise ApiError(403, "This endpoint needs a client key (api_live_…)")
    node = current_app.config["NODE"]
    g.rate_headers = await node.limits.check_key(key.id)
    if not key.has_scope(scope):
        raise ApiError(403, f"This key lacks the '{scope}' scope")
    return key


async def require_gateway() -> tuple[ApiKey, dict]:
    """The calling gateway key and its gateway row."""
    key = await _lookup()
    if key.kind != "gateway":
        raise ApiError(403, "This endpoint needs a gateway key (gw_live_…)")
    gateway = await current_app.config["NODE"].store.run(gateways_store.get, key.gateway_id)
    if gateway is None:
        raise ApiError(401, "Invalid or revoked API key")
    return key, gateway
