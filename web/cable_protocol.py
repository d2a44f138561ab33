"""The Action Cable wire protocol as a sans-IO state machine.

Gateway phones run an Action Cable client (``@rails/actioncable`` or a port of it) and
expect the exact frames a Rails server sends. This module knows those frames and the
subscription bookkeeping of one connection, and nothing else: no sockets, no clock, no
database. The WebSocket layer feeds it text, sends what it returns, and asks the rest of
the server to decide on subscriptions. Keeping it pure lets every protocol rule be
tested as a table, and fuzzed, without a network or a timer.

Rules that matter to real clients (see shared/ACTIONCABLE.md):

* the identifier is an opaque string: it is echoed as received, never re-serialised,
  because the client matches subscriptions by string equality;
* a bad frame is reported as :class:`FrameIgnored` and never closes the connection,
  so :meth:`CableConnection.receive` must not raise on any input;
* clients resend ``subscribe`` every 500 ms until confirmed, so a repeat must not
  create a second subscription.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Union

import attrs

__all__ = [
    "ActionReceived", "CableConnection", "CableEvent", "FrameIgnored", "SubscribeRequested",
    "Unsubscribed", "api_key_digest", "confirm", "disconnect", "message", "ping", "reject",
    "welcome", "SUBPROTOCOL",
]

SUBPROTOCOL = "actioncable-v1-json"
"""The only WebSocket subprotocol the server may select."""


# One encoder and one decoder for every frame: `json.dumps`/`json.loads` with options build a
# new one per call, which cost more than the frame itself.
# ASCII output escapes lone surrogates, so any str identifier encodes to UTF-8.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dump(obj: Any) -> str:
    return _ENCODER.encode(obj)


def welcome() -> str:
    """Frame sent once the connection is accepted."""
    return _dump({"type": "welcome"})


def ping(unix_seconds: int) -> str:
    """Keep-alive frame carrying the server time in whole seconds."""
    return _dump({"type": "ping", "message": int(unix_seconds)})


def confirm(identifier: str) -> str:
    """Frame confirming the subscription ``identifier``."""
    return _dump({"identifier": identifier, "type": "confirm_subscription"})


def reject(identifier: str) -> str:
    """Frame rejecting the subscription ``identifier``."""
    return _dump({"identifier": identifier, "type": "reject_subscription"})


def disconnect(reason: str, reconnect: bool) -> str:
    """Frame telling the client why it is closed and whether to come back."""
    # Always send the key: the JS client treats a missing ``reconnect`` as false.
    return _dump({"type": "disconnect", "reason": reason, "reconnect": bool(reconnect)})


def message(identifier: str, payload: dict) -> str:
    """Frame delivering ``payload`` to the subscription ``identifier``; NaN raises."""
    return _dump({"identifier": identifier, "message": payload})


def api_key_digest(api_key: str) -> str:
    """SHA-256 hex digest of an API key, as clients put it in the identifier."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@attrs.frozen
class SubscribeRequested:
    """The client asks to subscribe; answer with ``confirm`` or ``reject``."""

    identifier: str
    params: dict


@attrs.frozen
class Unsubscribed:
    """The client dropped a subscription (confirmed or still pending)."""

    identifier: str


@attrs.frozen
class ActionReceived:
    """The client performed ``action``; ``data`` is the whole object, ``action`` included."""

    identifier: str
    action: str
    data: dict


@attrs.frozen
class FrameIgnored:
    """A client frame that was dropped; ``reason`` is for the log."""

    reason: str


CableEvent = Union[SubscribeRequested, Unsubscribed, ActionReceived, FrameIgnored]


class _Invalid(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Invalid("number out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def _loads(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing floats; raises ValueError."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise _Invalid("nested too deeply") from None


def _ignored(reason: str) -> tuple[list[CableEvent], list[str]]:
    return [FrameIgnored(reason)], []


@attrs.define
class CableConnection:
    """Subscription state of one connection, fed with the client's frames."""

    max_subscriptions: int = 32
    # identifier -> True once confirmed, False while pending. (One small dict: two empty sets
    # took 432 bytes on every connection, and a phone holds one subscription.)
    _states: dict[str, bool] = attrs.field(factory=dict, init=False)

    @property
    def subscribed(self) -> frozenset[str]:
        """Identifiers confirmed and not yet unsubscribed."""
        return frozenset(i for i, confirmed in self._states.items() if confirmed)

    @property
    def pending(self) -> frozenset[str]:
        """Identifiers asked for and still awaiting ``confirm`` or ``reject``."""
        return frozenset(i for i, confirmed in self._states.items() if not confirmed)

    def confirm(self, identifier: str) -> str:
        """Mark ``identifier`` subscribed and return its confirmation frame."""
        self._states[identifier] = True
        return confirm(identifier)

    def reject(self, identifier: str) -> str:
        """Forget ``identifier`` and return its rejection frame."""
        self.unsubscribe(identifier)
        return reject(identifier)

    def unsubscribe(self, identifier: str) -> None:
        """Forget ``identifier``, pending or confirmed; nothing is sent."""
        self._states.pop(identifier, None)

    def receive_bytes(self, data: bytes) -> tuple[list[CableEvent], list[str]]:
        """Handle a binary frame: UTF-8 JSON like a text frame, else ignored."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return _ignored("frame is not bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return _ignored("binary frame is not UTF-8")
        return self.receive(text)

    def receive(self, text: str) -> tuple[list[CableEvent], list[str]]:
        """Parse one client frame into events and frames to send straight back."""
        if not isinstance(text, str):
            return _ignored("frame is not text")
        try:
            frame = _loads(text)
        except ValueError as exc:  # JSONDecodeError, _Invalid, int digit limit
            return _ignored(f"frame is not JSON: {str(exc)[:80]}")
        if not isinstance(frame, dict):
            return _ignored("frame is not a JSON object")
        command = frame.get("command")
        identifier = frame.get("identifier")
        if command not in ("subscribe", "unsubscribe", "message"):
            return _ignored(f"unknown command {_short(command)}")
        if not isinstance(identifier, str):
            return _ignored(f"{command} without a string identifier")
        if command == "subscribe":
            return self._subscribe(identifier)
        if command == "unsubscribe":
            if identifier not in self._states:
                return _ignored("unsubscribe of an unknown identifier")
            self.unsubscribe(identifier)
            return [Unsubscribed(identifier)], []
        return self._message(identifier, frame.get("data"))

    def _subscribe(self, identifier: str) -> tuple[list[CableEvent], list[str]]:
        if identifier in self._states:  # confirmed: again; pending: the answer is coming
            return ([], [confirm(identifier)]) if self._states[identifier] else ([], [])
        try:
            params = _loads(identifier)
        except ValueError:
            return _ignored("identifier is not JSON")
        if not isinstance(params, dict):
            return _ignored("identifier is not a JSON object")
        if len(self._states) >= self.max_subscriptions:
            return _ignored("too many subscriptions")
        self._states[identifier] = False
        return [SubscribeRequested(identifier, params)], []

    def _message(self, identifier: str, raw: Any) -> tuple[list[CableEvent], list[str]]:
        if not self._states.get(identifier):
            return _ignored("message on an identifier not subscribed")
        if not isinstance(raw, str):
            return _ignored("message data is not a string")
        try:
            data = _loads(raw)
        except ValueError:
            return _ignored("message data is not JSON")
        if not isinstance(data, dict):
            return _ignored("message data is not a JSON object")
        action = data.get("action")
        if not isinstance(action, str) or not action:
            return _ignored("message data has no action")
        return [ActionReceived(identifier, action, data)], []


def _short(value: Any) -> str:
    """A log-safe rendering of an untrusted value: short, and never a deep repr."""
    if isinstance(value, str):
        return repr(value[:40])
    return "of type " + type(value).__name__
