"""The node's Prometheus metrics, on a registry of its own (never the process-global one), so two
nodes in one process (tests, embedding) keep separate counts.

Every method is a cheap in-memory update: no I/O, no database, safe to call from any task of
the node. `GET /metrics` (web/metrics.py) renders `registry` in the text exposition format.

Names, as operators see them:

- `smsgw_messages_total{direction,status}`: outbound `queued` / `scheduled` (accepted),
  `dispatched`, `sent`, `delivered`, `retried`, `failed`, `expired`; inbound `received`.
- `smsgw_dispatch_latency_seconds`: histogram, from the start of the claim transaction to the
  `send_sms` frame written on the phone's socket.
- `smsgw_queue_depth`: gauge, queued messages in the shared database (the scheduler's tick).
- `smsgw_gateways_connected`: gauge, phones with a live subscribed socket on this node.
- `smsgw_webhook_deliveries_total{outcome}`: `delivered`, `failed` (will retry), `dead`.
- `smsgw_otp_sends_total`, `smsgw_otp_verifies_total{result}`.
- `smsgw_http_requests_total{route,method,status}`: route is the URL rule, not the raw path.
- `smsgw_actor_restarts_total{actor}`: the supervisor restarted a crashed permanent actor.
"""

from __future__ import annotations

from typing import Callable

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NodeMetrics", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_KNOWN_MESSAGES = (
    ("outbound", "queued"), ("outbound", "scheduled"), ("outbound", "dispatched"), ("outbound", "sent"),
    ("outbound", "delivered"), ("outbound", "retried"), ("outbound", "failed"), ("outbound", "expired"),
    ("inbound", "received"),
)


@attrs.define(eq=False)
class NodeMetrics:
    """One node's counters, gauges and histograms. Construct with `NodeMetrics()`."""

    registry: CollectorRegistry = attrs.field(factory=lambda: CollectorRegistry(auto_describe=True))
    messages: Counter = attrs.field(init=False)
    dispatch_latency: Histogram = attrs.field(init=False)
    queue_depth: Gauge = attrs.field(init=False)
    gateways_connected: Gauge = attrs.field(init=False)
    webhook_deliveries: Counter = attrs.field(init=False)
    otp_sends: Counter = attrs.field(init=False)
    otp_verifies: Counter = attrs.field(init=False)
    http_requests: Counter = attrs.field(init=False)
    actor_restarts: Counter = attrs.field(init=False)
    _children: dict = attrs.field(init=False, factory=dict)  # (metric, labels) -> its child (`_child`)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.messages = Counter("smsgw_messages_total", "Messages by direction and the status they reached",
                                ["direction", "status"], registry=r)
        self.dispatch_latency = Histogram(
            "smsgw_dispatch_latency_seconds",
            "From claiming a queued message (or accepting one handed straight over) to its send_sms frame on the socket",
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("smsgw_queue_depth", "Messages queued and waiting for a gateway", registry=r)
        self.gateways_connected = Gauge("smsgw_gateways_connected",
                                        "Gateways with a live subscribed socket on this node", registry=r)
        self.webhook_deliveries = Counter("smsgw_webhook_deliveries_total", "Webhook delivery attempts by outcome",
                                          ["outcome"], registry=r)
        self.otp_sends = Counter("smsgw_otp_sends_total", "One-time passwords sent", registry=r)
        self.otp_verifies = Counter("smsgw_otp_verifies_total", "OTP verification attempts by result",
                                    ["result"], registry=r)
        self.http_requests = Counter("smsgw_http_requests_total", "HTTP requests by URL rule, method and status",
                                     ["route", "method", "status"], registry=r)
        self.actor_restarts = Counter("smsgw_actor_restarts_total", "Permanent actors restarted after a crash",
                                      ["actor"], registry=r)
        for direction, status in _KNOWN_MESSAGES:  # present at 0, so rate() works from the first scrape
            self.messages.labels(direction, status)
        for outcome in ("delivered", "failed", "dead"):
            self.webhook_deliveries.labels(outcome)

    def _child(self, metric, *labels: str):
        """`metric.labels(*labels)`, looked up once: prometheus_client's lookup (validation, a
        lock) was 1.7 % of the event loop at 1,000 sends a second, paid several times a message."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- wiring ---------------------------------------------------------------------------------

    def watch_gateways(self, online_count: Callable[[], int]) -> None:
        """Read `smsgw_gateways_connected` from `online_count()` at each scrape."""
        self.gateways_connected.set_function(online_count)

    # -- messages -------------------------------------------------------------------------------

    def accepted(self, status: str, n: int = 1) -> None:
        """Outbound messages stored by the API: `status` is `queued` or `scheduled`."""
        self._child(self.messages, "outbound", status).inc(n)

    def dispatched(self, n: int, seconds: float) -> None:
        """`n` messages claimed and written to their sockets, `seconds` after the claim began."""
        if n <= 0:
            return
        self._child(self.messages, "outbound", "dispatched").inc(n)
        for _ in range(n):
            self.dispatch_latency.observe(seconds)

    def reported(self, status: str, changed: bool = True, n: int = 1) -> None:
        """Phones' reports moved `n` messages to `status` (`sent`, `delivered`, `failed`, or
        `queued` for a failure that will be retried). Repeats that changed nothing are not counted."""
        if changed and n > 0:
            self._child(self.messages, "outbound", "retried" if status == "queued" else status).inc(n)

    def expired(self, n: int) -> None:
        """Queued messages failed for having outlived their TTL."""
        if n > 0:
            self.messages.labels("outbound", "expired").inc(n)

    def received(self, new: bool = True) -> None:
        """An inbound SMS was stored (`new`); a phone's resend of one already stored is not counted."""
        if new:
            self.messages.labels("inbound", "received").inc()

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    # -- for the webhooks, OTP, web and supervisor layers ------------------------------------------

    def webhook_delivery(self, outcome: str) -> None:
        """One webhook POST ended: `delivered` (2xx), `failed` (will be retried) or `dead` (gave up)."""
        self.webhook_deliveries.labels(outcome).inc()

    def otp_sent(self) -> None:
        """An OTP code was generated and its SMS queued."""
        self.otp_sends.inc()

    def otp_verified(self, result: str) -> None:
        """A verification attempt: `verified`, `invalid` (wrong code), `expired` or `locked`
        (no attempts left)."""
        self.otp_verifies.labels(result).inc()

    def http_request(self, route: str, method: str, status: int) -> None:
        self._child(self.http_requests, route, method, str(status)).inc()

    def actor_restarted(self, actor: str) -> None:
        self.actor_restarts.labels(actor).inc()
