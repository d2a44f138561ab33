"""The node's one wall clock: UTC timestamps that advance with Trio's clock.

Durations come from `trio.current_time()`; timestamps that rules compare (an OTP's expiry, a
rolling hour of sends) come from here. Anchored to the real time once, then moved only by
Trio's clock, so a test running under `trio.testing.MockClock` (or pytest-trio's
`autojump_clock`) moves these timestamps without sleeping.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import trio

__all__ = ["WallClock"]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@attrs.define
class WallClock:
    """Build it inside `trio.run` (the anchor reads Trio's clock)."""

    anchor_wall: datetime = attrs.Factory(_utc_now)
    anchor_trio: float = attrs.Factory(trio.current_time)

    def now(self) -> datetime:
        """The current time in UTC: the anchor plus the Trio time elapsed since it."""
        return self.anchor_wall + timedelta(seconds=trio.current_time() - self.anchor_trio)
