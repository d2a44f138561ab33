"""HTTP rate limits: per client key and per IP on register, answered with 429, `Retry-After`
and `RateLimit-*` headers. The counting is the pure GCRA in actors/rates.py; on several nodes
the backplane holds the state instead."""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from actors.rates import Gcra, RateDecision
from web.errors import ApiError

__all__ = ["RateLimits", "rate_headers"]


@attrs.define
class RateLimits:
    per_key: Gcra
    register: Gcra
    backplane: Any = None  # actors.backplane.Backplane: counts across nodes; None: this process alone

    @classmethod
    def from_settings(cls, settings, backplane: Any = None) -> "RateLimits":
        return cls(per_key=Gcra(limit=settings.rate_limit_per_key_per_minute, period=60.0),
                   register=Gcra(limit=settings.rate_limit_register_per_minute, period=60.0),
                   backplane=backplane)

    async def check_key(self, key_id: int) -> dict[str, str]:
        """Count one request of this client key; the RateLimit-* headers, or 429."""
        return _enforce(await self._decide(self.per_key, f"key:{key_id}"))

    async def check_register(self, ip: str) -> dict[str, str]:
        """Count one registration from this IP; the RateLimit-* headers, or 429."""
        return _enforce(await self._decide(self.register, f"ip:{ip}"))

    async def _decide(self, gcra: Gcra, key: str) -> RateDecision:
        if self.backplane is None:
            return gcra.check(key, trio.current_time())
        return await self.backplane.check_rate(gcra, key)


def rate_headers(decision: RateDecision) -> dict[str, str]:
    if decision.limit == 0:
        return {}
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(max(0, decision.remaining)),
        "RateLimit-Reset": str(math.ceil(decision.reset_after)),
    }


def _enforce(decision: RateDecision) -> dict[str, str]:
    headers = rate_headers(decision)
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
        raise ApiError(429, "Rate limit exceeded", headers=headers)
    return headers
