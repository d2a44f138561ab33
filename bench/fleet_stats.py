"""What a simulated fleet records: per-message arrival and delivery times, counts, percentiles."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import attrs
import trio




def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[min(int(rank), len(ordered)) - 1]


def latencies(start: Mapping[str, float], end: Mapping[str, float]) -> list[float]:
    """`end[id] - start[id]` for every message_id present in both."""
    return [end[m] - start[m] for m in start.keys() & end.keys()]


@attrs.define
class FleetStats:
    """What the phones saw, by message_id, on the `time.monotonic()` clock."""

    arrived: dict[str, float] = attrs.Factory(dict)    # first send_sms frame for the id
    delivered: dict[str, float] = attrs.Factory(dict)  # first `delivered` report sent
    failed: dict[str, float] = attrs.Factory(dict)     # first `failed` report sent
    handled_by: dict[str, str] = attrs.Factory(dict)   # message_id -> device that reported it
    duplicates: int = 0       # send_sms frames for an id already seen by the fleet
    connects: int = 0         # subscriptions confirmed, first ones and after reconnects
    online: int = 0           # phones subscribed right now
    stopped: int = 0          # phones told not to reconnect
    heartbeats: int = 0
    inbound: int = 0
    held_reports: int = 0     # delivery reports that waited for a socket
    _waiting: int = 0         # phones not yet subscribed once (nor stopped)
    _all_up: trio.Event = attrs.Factory(trio.Event)

    def record_arrival(self, message_id: str) -> bool:
        """Note a send_sms frame; False when the fleet had seen this id before."""
        if message_id in self.arrived:
            self.duplicates += 1
            return False
        self.arrived[message_id] = time.monotonic()
        return True

    def record_report(self, message_id: str, status: str, device_id: str) -> None:
        target = self.delivered if status == "delivered" else self.failed
        if message_id not in target:
            target[message_id] = time.monotonic()
            self.handled_by[message_id] = device_id

    def to_json(self) -> dict:
        return {"arrived": self.arrived, "delivered": self.delivered, "failed": self.failed,
                "handled_by": self.handled_by, "duplicates": self.duplicates, "connects": self.connects,
                "stopped": self.stopped, "heartbeats": self.heartbeats, "inbound": self.inbound,
                "held_reports": self.held_reports}

    def summary(self) -> dict:
        to_delivered = latencies(self.arrived, self.delivered)
        return {"received": len(self.arrived), "delivered": len(self.delivered), "failed": len(self.failed),
                "duplicates": self.duplicates, "connects": self.connects, "online": self.online,
                "held_reports": self.held_reports,
                "p50_arrival_to_delivered_ms": _ms(percentile(to_delivered, 50)),
                "p99_arrival_to_delivered_ms": _ms(percentile(to_delivered, 99))}

    @property
    def settled(self) -> bool:
        """Every phone has been subscribed once (or told to stop)."""
        return self._all_up.is_set()

    async def wait_settled(self) -> None:
        await self._all_up.wait()

    def _expect(self, phones: int) -> None:
        self._waiting = phones
        if phones == 0:
            self._all_up.set()

    def _settled_once(self) -> None:
        self._waiting -= 1
        if self._waiting <= 0:
            self._all_up.set()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
