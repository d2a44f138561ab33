"""Bearer keys: who is calling, and may they? 401 for no, unknown or revoked key; 403 for a key
of the wrong kind or without the scope. Client keys are rate limited here, once per request."""

from __future__ import annotations

from quart import current_app, g, request

from store import gateways as gateways_store
from store import keys as keys_store
from store.keys import ApiKey
from web.errors import ApiError

__all__ = ["bearer_key", "client_for", "parse_bearer", "require_client", "require_gateway"]


def parse_bearer(header: str) -> str | None:
    """The key in an `Authorization: Bearer …` header's value, if any."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def bearer_key() -> str | None:
    """The key in this request's `Authorization: Bearer …`, if any."""
    return parse_bearer(request.headers.get("Authorization", ""))


async def _lookup(node, presented: str | None) -> ApiKey:
    if presented is None:
        raise ApiError(401, "Missing API key: send Authorization: Bearer <key>")
    if not presented.startswith((keys_store.CLIENT_PREFIX, keys_store.GATEWAY_PREFIX)) or len(presented) > 200:
        raise ApiError(401, "Invalid API key")
    key = await node.keys.lookup(presented)
    if key is None:
        raise ApiError(401, "Invalid or revoked API key")
    return key


async def client_for(node, authorization: str, scope: str) -> tuple[ApiKey, dict[str, str]]:
    """The client key an `Authorization` header value presents, which must hold `scope`
    (admin holds every scope), and its RateLimit-* headers (a request counted; 429 past it)."""
    key = await _lookup(node, parse_bearer(authorization))
    if key.kind != "client":
        raise ApiError(403, "This endpoint needs a client key (api_live_…)")
    headers = await node.limits.check_key(key.id)
    if not key.has_scope(scope):
        raise ApiError(403, f"This key lacks the '{scope}' scope")
    return key, headers


async def require_client(scope: str) -> ApiKey:
    """The calling client key, which must hold `scope` (admin holds every scope)."""
    key, g.rate_headers = await client_for(current_app.config["NODE"], request.headers.get("Authorization", ""),
                                           scope)
    return key


async def require_gateway() -> tuple[ApiKey, dict]:
    """The calling gateway key and its gateway row."""
    key = await _lookup(current_app.config["NODE"], bearer_key())
    if key.kind != "gateway":
        raise ApiError(403, "This endpoint needs a gateway key (gw_live_…)")
    gateway = await current_app.config["NODE"].store.run(gateways_store.get, key.gateway_id)
    if gateway is None:
        raise ApiError(401, "Invalid or revoked API key")
    return key, gateway
