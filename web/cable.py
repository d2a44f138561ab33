"""`/cable`: the Action Cable endpoint the gateway phones hold open.

The shell around the sans-IO core in web/cable_protocol.py: authenticate, accept with the
`actioncable-v1-json` subprotocol, run the phone's `GatewayActor` beside the receive loop,
and turn the phone's actions into the same effects as the REST gateway endpoints. When the
socket ends, whatever the actor still held goes back to the queue.
"""

from __future__ import annotations

import collections
import logging
from datetime import datetime, timezone

import trio
from pydantic import ValidationError

from actors.gateway import GatewayActor
from store import gateways as gateways_store
from store import keys as keys_store
from store import messages as messages_store
from store.pool import StoreUnavailable
from web import cable_protocol as cable
from web.cable_socket import AsgiSocket
from web.models import HeartbeatRequest, InboundRequest, report_fields

__all__ = ["PATH", "serve_cable"]

log = logging.getLogger("smsgw.cable")
PATH = "/cable"
HANDLE_DEADLINE = 15.0  # one frame's effect: a store write through the group committer
REPORT_BATCH = 500      # a phone's reports written in one group commit at most
REPORT_BACKLOG = 1_000  # reports received and not yet written: past it, stop reading the socket
HEARTBEAT_FLUSH_DEADLINE = 3.0  # a leaving phone's last heartbeat, before it is marked offline
RECONNECTING_REASONS = frozenset({"server_restart", "stalled", "heartbeat_timeout"})


def _presented_key(socket: AsgiSocket) -> str | None:
    key = socket.query("api_key")
    if key:
        return key
    scheme, _, value = (socket.header("Authorization") or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _origin_allowed(socket: AsgiSocket, allowed: tuple[str, ...]) -> bool:
    """Phones send no Origin; a browser's is checked, the Action Cable way."""
    origin = socket.header("Origin")
    return origin is None or allowed == ("*",) or origin.rstrip("/") in allowed


async def serve_cable(node, scope: dict, receive, send) -> None:
    """One `/cable` WebSocket connection (an ASGI application for its scope)."""
    socket = AsgiSocket(scope, receive, send)
    try:
        await _serve(node, socket)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await socket.close(1000)


async def _serve(node, socket: AsgiSocket) -> None:
    presented = _presented_key(socket)
    key = None
    if presented and presented.startswith(keys_store.GATEWAY_PREFIX) and len(presented) < 200:
        key = await node.keys.lookup(presented)
    subprotocol = cable.SUBPROTOCOL if cable.SUBPROTOCOL in socket.requested_subprotocols else None
    if not await socket.accept(subprotocol):
        return
    if key is None or key.kind != "gateway" or not _origin_allowed(socket, node.settings.allowed_origins):
        reason = "unauthorized" if key is None or key.kind != "gateway" else "invalid_request"
        log.info("cable refused (%s)", reason)
        await socket.send(cable.disconnect(reason, reconnect=False))
        return
    gateway = await node.store.run(gateways_store.get, key.gateway_id)
    if gateway is None:
        await socket.send(cable.disconnect("unauthorized", reconnect=False))
        return
    session = _CableSession(node, gateway, cable.api_key_digest(presented), socket)
    del gateway  # the whole row, which this frame would keep for the socket's life
    await session.run()


class _CableSession:
    """One phone's connection: the receive loop, its actor, and the cleanup when it ends."""

    def __init__(self, node, gateway: dict, digest: str, socket) -> None:
        self.node = node
        # What the connection's store calls read of the phone (its row, kept whole for hours
        # by every idle socket, cost 1.5 KB each).
        self.gateway = {"id": gateway["id"], "device_id": gateway["device_id"], "name": gateway["name"]}
        self.digest = digest
        self.socket = socket
        self.protocol = cable.CableConnection()
        # Delivery reports received and not yet written. The receive loop only queues them and
        # reads on; the reporter writes what has gathered in one group commit, so a phone's
        # reports are never written one round trip at a time.
        # (Made with the first report: an idle phone holds none of it.)
        self._reports: collections.deque[tuple[str, str, str | None]] | None = None
        self._reports_arrived: trio.Event | None = None  # the reporter waits on it
        self._reports_room: trio.Event | None = None     # the receive loop waits on it
        self._nursery: trio.Nursery | None = None
        registry = node.gateways
        self.actor = GatewayActor(
            gateway_id=gateway["id"], device_id=gateway["device_id"], send_text=socket.send,
            send_texts=socket.send_many,
            active=gateway["active"], priority=gateway["priority"],
            bucket=registry.bucket_for(gateway["send_rate_per_minute"], trio.current_time()))

    async def run(self) -> None:
        actor, registry = self.actor, self.node.gateways
        registry.attach(actor)
        log.info("gateway %s connected", actor.device_id, extra={"device_id": actor.device_id})
        try:
            actor.queue(cable.welcome())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # the reporter starts there with the first report
                nursery.start_soon(self._receive_loop, nursery.cancel_scope)
                await actor.run()
                nursery.cancel_scope.cancel()
            if actor.close_reason is not None:
                # A replaced socket must not reconnect (two copies of one phone would take
                # turns); a restart, a stall or a silent phone should.
                reconnect = actor.close_reason in RECONNECTING_REASONS
                with trio.move_on_after(1):
                    await self.socket.send(cable.disconnect(actor.close_reason, reconnect=reconnect))
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup()

    async def _cleanup(self) -> None:
        actor, registry = self.actor, self.node.gateways
        # Reports the phone sent before closing land before what it held goes back to the queue.
        while self._reports:
            await self._write_reports(self._take_reports())
        held = actor.drop_in_flight()
        last = registry.detach(actor)
        log.info("gateway %s disconnected (%s), requeueing %d", actor.device_id,
                 actor.close_reason or "socket closed", len(held), extra={"device_id": actor.device_id})
        # Its last heartbeat is written first: written later, it would mark the phone online
        # again. Bounded on its own: a writer that cannot write must not keep the messages held.
        with trio.move_on_after(HEARTBEAT_FLUSH_DEADLINE):
            await self.node.heartbeats.flush(actor.gateway_id)
        with trio.move_on_after(10):
            await self.node.dispatcher.release(actor.gateway_id, actor.lease)
            # Offline only if no newer connection holds the phone, here or on another node.
            if last and await self.node.backplane.gateway_left(actor.gateway_id, actor.lease):
                await self.node.store.run(gateways_store.mark_offline, self.gateway)

    async def _receive_loop(self, scope: trio.CancelScope) -> None:
        while True:
            frames = await self.socket.receive_many()
            if frames is None:  # the phone went away: end the connection
                scope.cancel()
                return
            self.actor.noticed()
            for data in frames:
                if isinstance(data, bytes):
                    events, replies = self.protocol.receive_bytes(data)
                else:
                    events, replies = self.protocol.receive(data)
                for reply in replies:
                    self.actor.queue(reply)
                for event in events:
                    if self._queue_report(event):  # the busiest frame: queued at once, no awaiting
                        continue
                    # A frame the phone sent just before closing must take effect before the
                    # cleanup returns what the connection held to the queue: finish it, even
                    # if cancelled.
                    with trio.CancelScope(shield=True), trio.move_on_after(HANDLE_DEADLINE):
                        await self._handle(event)
            # The database is behind this phone's reports: stop reading until they are written.
            while self._reports and len(self._reports) >= REPORT_BACKLOG:
                self._reports_room = trio.Event()
                await self._reports_room.wait()

    def _queue_report(self, event) -> bool:
        """Queue a delivery report for the reporter; False for any other event."""
        if not (isinstance(event, cable.ActionReceived) and event.action == "delivery_report"
                and event.identifier == self.actor.identifier):
            return False
        try:
            report = report_fields(event.data)
        except ValidationError as exc:
            log.info("gateway %s: bad delivery_report: %s", self.actor.device_id, exc.errors()[0]["msg"],
                     extra={"device_id": self.actor.device_id})
            return True
        if self._reports is None:  # a phone that never reports (an idle one) costs no task for it
            self._reports = collections.deque()
            self._nursery.start_soon(self._reporter)
        self._reports.append(report)
        if self._reports_arrived is not None:
            self._reports_arrived.set()
        return True

    async def _reporter(self) -> None:
        """Write the queued delivery reports, all that have gathered at a time, in order."""
        while True:
            if not self._reports:
                self._reports_arrived = trio.Event()
                await self._reports_arrived.wait()
            await self._write_reports(self._take_reports())

    def _take_reports(self) -> list[tuple[str, str, str | None]]:
        batch = [self._reports.popleft() for _ in range(min(REPORT_BATCH, len(self._reports)))]
        if self._reports_room is not None:
            self._reports_room.set()
        return batch

    async def _write_reports(self, batch: list[tuple[str, str, str | None]]) -> None:
        """Shielded: taken from the queue, they are written (or the database stayed away for
        HANDLE_DEADLINE), even while the connection is being cancelled."""
        with trio.CancelScope(shield=True), trio.move_on_after(HANDLE_DEADLINE) as scope:
            outcomes = await self.node.dispatcher.report_many(self.gateway, batch, retry_unavailable=True)
        if scope.cancelled_caught:
            log.warning("gateway %s: %d report(s) not stored, database unavailable", self.actor.device_id,
                        len(batch), extra={"device_id": self.actor.device_id})
            return
        for outcome in outcomes:
            if isinstance(outcome, messages_store.UnknownMessage):
                log.info("gateway %s: report for unknown message %s", self.actor.device_id, str(outcome)[:64],
                         extra={"device_id": self.actor.device_id, "message_id": str(outcome)[:64]})

    async def _handle(self, event) -> None:
        match event:
            case cable.SubscribeRequested(identifier=identifier, params=params):
                await self._subscribe(identifier, params)
            case cable.Unsubscribed(identifier=identifier):
                if identifier == self.actor.identifier:
                    self.actor.identifier = None
            case cable.ActionReceived(identifier=identifier, action=action, data=data):
                if identifier != self.actor.identifier:
                    log.info("gateway %s: action on a foreign subscription ignored", self.actor.device_id,
                             extra={"device_id": self.actor.device_id})
                    return
                await self._perform(action, data)
            case cable.FrameIgnored(reason=reason):
                log.info("gateway %s: frame ignored: %s", self.actor.device_id, reason,
                         extra={"device_id": self.actor.device_id})

    async def _subscribe(self, identifier: str, params: dict) -> None:
        if params.get("channel") != "GatewayChannel" or params.get("api_key_digest") != self.digest:
            self.actor.queue(self.protocol.reject(identifier))
            return
        if self.actor.identifier is not None and self.actor.identifier != identifier:
            self.actor.queue(self.protocol.reject(identifier))  # one GatewayChannel per socket
            return
        # Presence for the other nodes; one holding an older socket of this phone closes it.
        await self.node.backplane.gateway_attached(self.actor.gateway_id, self.actor.lease)
        await self.node.store.run(gateways_store.mark_online, self.gateway, self.actor.lease)
        self.actor.identifier = identifier
        self.actor.queue(self.protocol.confirm(identifier))
        self.node.dispatcher.capacity_changed()

    async def _perform(self, action: str, data: dict) -> None:
        context = {"region": self.node.settings.default_country_code}
        try:
            match action:
                case "heartbeat":
                    body = HeartbeatRequest.model_validate(data, context=context)
                    health = body.battery_level, body.signal_strength, body.messages_in_queue
                    self.actor.record_heartbeat(*health)
                    # Stored by the node's heartbeat writer with every other phone's, never
                    # awaited here: a slow database must not stop this socket being read.
                    self.node.heartbeats.record(self.gateway["id"], *health)
                case "message_received":
                    payload = dict(data)
                    if isinstance(payload.get("timestamp"), str):
                        payload["timestamp"] = _parse_time(payload["timestamp"])
                    body = InboundRequest.model_validate(payload, context=context)
                    _, new = await self.node.store.run(messages_store.store_inbound, self.gateway, body.sender,
                                                       body.message, body.timestamp or datetime.now(timezone.utc))
                    self.node.metrics.received(new)
                case _:
                    log.info("gateway %s: unknown action %r ignored", self.actor.device_id, action[:64],
                             extra={"device_id": self.actor.device_id})
        except ValidationError as exc:
            log.info("gateway %s: bad %s: %s", self.actor.device_id, action, exc.errors()[0]["msg"],
                     extra={"device_id": self.actor.device_id})
        except StoreUnavailable as exc:
            log.warning("gateway %s: %s not stored, database unavailable: %s", self.actor.device_id, action, exc,
                        extra={"device_id": self.actor.device_id})
        except ValueError as exc:
            log.info("gateway %s: bad %s: %s", self.actor.device_id, action, exc,
                     extra={"device_id": self.actor.device_id})


def _parse_time(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
