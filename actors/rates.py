"""Rate-limiting cores: a segment budget per gateway, GCRA for HTTP.

Each phone may only send so many SMS per minute before the carrier (or
Android itself) starts refusing, so the dispatcher spends a token bucket
counted in segments.  The HTTP API limits requests per key with GCRA,
which needs one timestamp per key instead of a counter and a window, and
whose single step (``Gcra.decide``) is pure so a Redis Lua script can
mirror it exactly for multi-node deployments.
"""

from __future__ import annotations

import math

import attrs

__all__ = ["Gcra", "RateDecision", "TokenBucket"]

# Float arithmetic may leave 9.999999999 tokens after waiting exactly
# ``wait_time`` for 10, or a GCRA arrival a hair early; this much is ignored.
_TOKEN_EPSILON = 1e-9
_TIME_EPSILON = 1e-9


@attrs.define
class TokenBucket:
    """Send budget of one gateway, in segments; refills continuously.

    ``rate_per_minute == 0`` means unlimited.  ``capacity`` is the largest
    burst, by default one minute's worth.  A message longer than the
    capacity can still go, once the bucket is full, and empties it.
    """

    rate_per_minute: float = attrs.field(validator=attrs.validators.ge(0))
    capacity: float
    tokens: float
    updated_at: float

    @classmethod
    def full(
        cls, rate_per_minute: float, now: float, capacity: float | None = None
    ) -> TokenBucket:
        """A bucket at ``rate_per_minute`` holding its whole capacity."""
        capacity = _checked_capacity(rate_per_minute, capacity)
        return cls(rate_per_minute, capacity, tokens=capacity, updated_at=now)

    @property
    def unlimited(self) -> bool:
        """True when the gateway has no rate limit."""
        return self.rate_per_minute == 0

    def available(self, now: float) -> float:
        """Tokens available at ``now``; ``math.inf`` when unlimited."""
        if self.unlimited:
            return math.inf
        elapsed = max(0.0, now - self.updated_at)
        refill = elapsed * self.rate_per_minute / 60.0
        return min(self.capacity, self.tokens + refill)

    def try_take(self, n: float, now: float) -> bool:
        """Spend ``n`` tokens if they are available at ``now``.

        When ``n`` exceeds the capacity, a full bucket is enough and is
        left empty.  Returns whether the tokens were taken.
        """
        if n < 0:
            raise ValueError(f"cannot take a negative number of tokens: {n}")
        if self.unlimited:
            return True
        self._refill(now)
        if n <= self.tokens + _TOKEN_EPSILON:
            self.tokens = max(0.0, self.tokens - n)
            return True
        if n > self.capacity and self.tokens >= self.capacity - _TOKEN_EPSILON:
            self.tokens = 0.0
            return True
        return False

    def wait_time(self, n: float, now: float) -> float:
        """Seconds from ``now`` until ``try_take(n)`` would succeed.

        0 when it would succeed now; for ``n`` above the capacity, the time
        until the bucket is full.
        """
        if self.unlimited:
            return 0.0
        missing = min(n, self.capacity) - self.available(now)
        if missing <= _TOKEN_EPSILON:
            return 0.0
        return missing * 60.0 / self.rate_per_minute

    def set_rate(
        self, rate_per_minute: float, now: float, capacity: float | None = None
    ) -> None:
        """Change the rate (and capacity, by default the new rate) at ``now``.

        Tokens earned at the old rate are kept, clamped to the new
        capacity.  Leaving unlimited starts the bucket full.
        """
        capacity = _checked_capacity(rate_per_minute, capacity)
        if self.unlimited:
            tokens = capacity
        else:
            tokens = min(capacity, self.available(now))
        self.rate_per_minute = rate_per_minute
        self.capacity = capacity
        self.tokens = tokens
        self.updated_at = max(self.updated_at, now)

    def _refill(self, now: float) -> None:
        self.tokens = self.available(now)
        self.updated_at = max(self.updated_at, now)


def _checked_capacity(rate_per_minute: float, capacity: float | None) -> float:
    if rate_per_minute < 0:
        raise ValueError(f"rate must be >= 0 (0 = unlimited): {rate_per_minute}")
    if capacity is None:
        capacity = rate_per_minute
    if rate_per_minute > 0 and capacity <= 0:
        raise ValueError(f"a limited bucket needs a capacity > 0: {capacity}")
    return capacity


@attrs.frozen
class RateDecision:
    """The outcome of one rate check, shaped for RateLimit-* headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until fully replenished
    retry_after: float  # seconds until the next request may pass; 0 if allowed


_UNLIMITED = RateDecision(
    allowed=True, limit=0, remaining=0, reset_after=0.0, retry_after=0.0
)


@attrs.define
class Gcra:
    """Generic cell rate algorithm: ``limit`` requests per ``period`` seconds.

    Keeps one theoretical arrival time (TAT) per key.  A burst of ``limit``
    requests passes at once, then one per ``period / limit`` seconds.
    ``limit == 0`` means unlimited.  At most ``max_keys`` keys are kept:
    when full, keys already fully replenished are dropped (losing nothing),
    then the least recently admitted ones (forgetting their usage).
    """

    limit: int = attrs.field(validator=attrs.validators.ge(0))
    period: float = attrs.field(validator=attrs.validators.gt(0))
    max_keys: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))
    # key -> TAT, least recently admitted first.
    _tats: dict[str, float] = attrs.field(factory=dict)

    def check(self, key: str, now: float) -> RateDecision:
        """Admit one request for ``key`` at ``now`` if the rate allows it."""
        if self.limit == 0:
            return _UNLIMITED
        decision, tat = self.decide(self._tats.get(key), now, self.limit, self.period)
        if decision.allowed:
            if self._tats.pop(key, None) is None:
                self._make_room(now)
            self._tats[key] = tat
        return decision

    def tracked_keys(self) -> int:
        """How many keys currently hold state (at most ``max_keys``)."""
        return len(self._tats)

    @staticmethod
    def decide(
        tat: float | None, now: float, limit: int, period: float
    ) -> tuple[RateDecision, float]:
        """One GCRA step: the decision and the TAT to store afterwards.

        ``tat`` is the stored TAT, None for an unknown key.  When denied
        the returned TAT equals the stored one (nothing needs writing).
        """
        if limit == 0:
            return _UNLIMITED, now if tat is None else tat
        interval = period / limit
        tat = now if tat is None else max(tat, now)
        new_tat = tat + interval
        allow_at = new_tat - period
        if now + _TIME_EPSILON < allow_at:
            decision = RateDecision(
                allowed=False,
                limit=limit,
                remaining=0,
                reset_after=tat - now,
                retry_after=allow_at - now,
            )
            return decision, tat
        headroom = (now - allow_at) / interval
        remaining = min(limit - 1, max(0, math.floor(headroom + _TIME_EPSILON)))
        decision = RateDecision(
            allowed=True,
            limit=limit,
            remaining=remaining,
            reset_after=new_tat - now,
            retry_after=0.0,
        )
        return decision, new_tat

    def _make_room(self, now: float) -> None:
        """Free space for one new key, if the table is full.

        Evicting live keys frees a tenth of the table at once, so that a
        flood of new keys costs one sweep per ``max_keys // 10`` inserts.
        """
        if len(self._tats) < self.max_keys:
            return
        self._tats = {k: t for k, t in self._tats.items() if t > now}
        target = self.max_keys - max(1, self.max_keys // 10)
        excess = len(self._tats) - target
        if excess > 0:
            for key in list(self._tats)[:excess]:
                del self._tats[key]
