"""The Action Cable frames a simulated phone reads and writes (client side, pure)."""

from __future__ import annotations

import hashlib
import json

import attrs




SUBPROTOCOLS = ("actioncable-v1-json", "actioncable-unsupported")
FRAME_KINDS = ("welcome", "ping", "confirm", "reject", "disconnect", "send_sms", "other")


@attrs.frozen
class ServerFrame:
    """A server frame as a phone reads it; `kind` is one of FRAME_KINDS."""

    kind: str
    identifier: str = ""
    reason: str = ""
    reconnect: bool = False
    payload: dict = attrs.field(factory=dict, hash=False)


def classify(text: str | bytes) -> ServerFrame:
    """What a server frame means to a phone; anything unexpected is `other` (never raises)."""
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return ServerFrame("other")
    if not isinstance(frame, dict):
        return ServerFrame("other")
    kind, ident = frame.get("type"), frame.get("identifier")
    ident = ident if isinstance(ident, str) else ""
    if kind in ("welcome", "ping"):
        return ServerFrame(kind)
    if kind in ("confirm_subscription", "reject_subscription"):
        return ServerFrame(kind.split("_")[0], identifier=ident)
    if kind == "disconnect":
        # Like the JS client: only an explicit `reconnect: true` allows reconnecting.
        return ServerFrame("disconnect", reason=str(frame.get("reason")), reconnect=frame.get("reconnect") is True)
    message = frame.get("message")
    if isinstance(message, dict) and message.get("action") == "send_sms" and isinstance(message.get("message_id"), str):
        return ServerFrame("send_sms", identifier=ident, payload=message)
    return ServerFrame("other")


def identifier_for(key: str) -> str:
    """The GatewayChannel identifier, serialised as `JSON.stringify` does."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return json.dumps({"channel": "GatewayChannel", "api_key_digest": digest}, separators=(",", ":"))


def subscribe(identifier: str) -> str:
    return json.dumps({"command": "subscribe", "identifier": identifier})


def perform(identifier: str, action: str, **data: object) -> str:
    return json.dumps({"command": "message", "identifier": identifier,
                       "data": json.dumps({"action": action, **data})})
