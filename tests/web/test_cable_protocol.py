"""Table-driven tests of the sans-IO Action Cable core, plus a garbage fuzz loop."""

import hashlib
import json
import random

import pytest

from web import cable_protocol as cp
from web.cable_protocol import (
    ActionReceived,
    CableConnection,
    FrameIgnored,
    SubscribeRequested,
    Unsubscribed,
)

DIGEST = hashlib.sha256(b"gw_live_secret").hexdigest()
IDENT = json.dumps({"channel": "GatewayChannel", "api_key_digest": DIGEST}, separators=(",", ":"))
# Odd spacing, key order and a unicode escape: must come back exactly as sent.
ODD_IDENT = '{ "api_key_digest" :"%s",\n\t"channel":  "GatewayChannel", "x":"\\u00e9" }' % DIGEST


def frame(command, identifier=IDENT, **extra):
    return json.dumps({"command": command, "identifier": identifier, **extra})


def perform(action, identifier=IDENT, **data):
    return frame("message", identifier, data=json.dumps({"action": action, **data}))


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (cp.welcome(), '{"type":"welcome"}'),
        (cp.ping(1700000000), '{"type":"ping","message":1700000000}'),
        (cp.ping(1700000000.9), '{"type":"ping","message":1700000000}'),
        (cp.confirm("x"), '{"identifier":"x","type":"confirm_subscription"}'),
        (cp.reject("x"), '{"identifier":"x","type":"reject_subscription"}'),
        (
            cp.disconnect("unauthorized", False),
            '{"type":"disconnect","reason":"unauthorized","reconnect":false}',
        ),
        (
            cp.disconnect("server_restart", True),
            '{"type":"disconnect","reason":"server_restart","reconnect":true}',
        ),
        (
            cp.message("x", {"action": "send_sms", "message_id": 7}),
            '{"identifier":"x","message":{"action":"send_sms","message_id":7}}',
        ),
        (cp.api_key_digest("gw_live_secret"), DIGEST),
    ],
)
def test_builders(built, expected):
    assert built == expected


@pytest.mark.parametrize("builder", [cp.confirm, cp.reject, lambda i: cp.message(i, {})])
@pytest.mark.parametrize("identifier", [IDENT, ODD_IDENT, "not json at all", "\ud800"])
def test_identifier_is_echoed_byte_for_byte(builder, identifier):
    out = builder(identifier)
    assert json.loads(out)["identifier"] == identifier
    out.encode("utf-8")  # always sendable, even with a lone surrogate


def test_message_refuses_nan_payload():
    with pytest.raises(ValueError):
        cp.message("x", {"v": float("nan")})


def subscribed(identifier=IDENT):
    conn = CableConnection()
    conn.receive(frame("subscribe", identifier))
    conn.confirm(identifier)
    return conn


RECEIVE_CASES = [
    # (name, frame, events, replies)
    ("action", perform("heartbeat", battery_level=85),
     [ActionReceived(IDENT, "heartbeat", {"action": "heartbeat", "battery_level": 85})], []),
    ("repeat subscribe is confirmed again", frame("subscribe"), [], [cp.confirm(IDENT)]),
    ("unsubscribe", frame("unsubscribe"), [Unsubscribed(IDENT)], []),
    ("not json", "{nope", [FrameIgnored("*")], []),
    ("empty", "", [FrameIgnored("*")], []),
    ("not an object", "[1,2]", [FrameIgnored("frame is not a JSON object")], []),
    ("null", "null", [FrameIgnored("frame is not a JSON object")], []),
    ("NaN", '{"command":"subscribe","identifier":NaN}', [FrameIgnored("*")], []),
    ("unknown command", frame("dance"), [FrameIgnored("unknown command 'dance'")], []),
    ("no command", json.dumps({"identifier": IDENT}), [FrameIgnored("*")], []),
    ("no identifier", '{"command":"subscribe"}', [FrameIgnored("*")], []),
    ("numeric identifier", frame("subscribe", 5), [FrameIgnored("*")], []),
    ("object identifier", frame("subscribe", {"channel": "G"}), [FrameIgnored("*")], []),
    ("identifier not json", frame("subscribe", "{channel"),
     [FrameIgnored("identifier is not JSON")], []),
    ("identifier a list", frame("subscribe", "[1]"),
     [FrameIgnored("identifier is not a JSON object")], []),
    ("identifier NaN", frame("subscribe", '{"a":NaN}'), [FrameIgnored("identifier is not JSON")], []),
    ("message not subscribed", perform("heartbeat", identifier="{}"),
     [FrameIgnored("message on an identifier not subscribed")], []),
    ("unsubscribe unknown", frame("unsubscribe", "{}"),
     [FrameIgnored("unsubscribe of an unknown identifier")], []),
    ("data missing", frame("message"), [FrameIgnored("message data is not a string")], []),
    ("data an object", frame("message", data={"action": "x"}),
     [FrameIgnored("message data is not a string")], []),
    ("data not json", frame("message", data="{"), [FrameIgnored("message data is not JSON")], []),
    ("data a list", frame("message", data="[]"),
     [FrameIgnored("message data is not a JSON object")], []),
    ("no action", frame("message", data="{}"), [FrameIgnored("message data has no action")], []),
    ("action not a string", frame("message", data='{"action":3}'),
     [FrameIgnored("message data has no action")], []),
    ("huge float", frame("message", data='{"action":"a","v":1e999}'),
     [FrameIgnored("message data is not JSON")], []),
]


@pytest.mark.parametrize(("name", "text", "events", "replies"), RECEIVE_CASES,
                         ids=[c[0] for c in RECEIVE_CASES])
def test_receive_on_a_subscribed_connection(name, text, events, replies):
    got_events, got_replies = subscribed().receive(text)
    assert got_replies == replies
    assert len(got_events) == len(events)
    for got, want in zip(got_events, events):
        if want == FrameIgnored("*"):
            assert isinstance(got, FrameIgnored) and got.reason
        else:
            assert got == want


@pytest.mark.parametrize("identifier", [IDENT, ODD_IDENT])
def test_subscribe_lifecycle_keeps_identifier_verbatim(identifier):
    conn = CableConnection()
    events, replies = conn.receive(frame("subscribe", identifier))
    assert replies == []
    [event] = events
    assert event == SubscribeRequested(identifier, json.loads(identifier))
    assert conn.pending == {identifier} and conn.subscribed == frozenset()
    # The client resends every 500 ms while undecided: nothing new comes of it.
    assert conn.receive(frame("subscribe", identifier)) == ([], [])
    # Messages before the confirmation are not accepted.
    assert conn.receive(perform("heartbeat", identifier))[0][0].reason.startswith("message on")
    out = conn.confirm(identifier)
    assert out == '{"identifier":%s,"type":"confirm_subscription"}' % json.dumps(identifier)
    assert conn.subscribed == {identifier} and conn.pending == frozenset()
    assert conn.receive(frame("subscribe", identifier)) == ([], [out])
    [action], _ = conn.receive(perform("delivery_report", identifier, message_id=1, status="sent"))
    assert action.identifier == identifier
    assert action.data == {"action": "delivery_report", "message_id": 1, "status": "sent"}
    # The same channel spelled differently is another subscription: string identity rules.
    other = json.dumps(json.loads(identifier))
    if other != identifier:
        assert conn.receive(perform("heartbeat", other))[0][0].reason.startswith("message on")


def test_reject_forgets_and_allows_a_new_request():
    conn = CableConnection()
    conn.receive(frame("subscribe"))
    assert conn.reject(IDENT) == cp.reject(IDENT)
    assert conn.pending == frozenset() and conn.subscribed == frozenset()
    events, _ = conn.receive(frame("subscribe"))
    assert events == [SubscribeRequested(IDENT, json.loads(IDENT))]


def test_unsubscribe_of_pending_and_server_side_unsubscribe():
    conn = CableConnection()
    conn.receive(frame("subscribe"))
    assert conn.receive(frame("unsubscribe")) == ([Unsubscribed(IDENT)], [])
    assert conn.pending == frozenset()
    conn = subscribed()
    assert conn.unsubscribe(IDENT) is None
    assert conn.subscribed == frozenset()
    assert isinstance(conn.receive(perform("heartbeat"))[0][0], FrameIgnored)


def test_subscription_cap():
    conn = CableConnection(max_subscriptions=2)
    for n in range(2):
        [event], _ = conn.receive(frame("subscribe", json.dumps({"n": n})))
        assert isinstance(event, SubscribeRequested)
    assert conn.receive(frame("subscribe", "{}")) == ([FrameIgnored("too many subscriptions")], [])


@pytest.mark.parametrize(
    ("data", "ignored"),
    [
        (frame("subscribe").encode(), None),
        (bytearray(frame("subscribe").encode()), None),
        (b"\xff\xfe", "binary frame is not UTF-8"),
        (b"\x80", "binary frame is not UTF-8"),
        (12, "frame is not bytes"),
    ],
)
def test_receive_bytes(data, ignored):
    events, _ = CableConnection().receive_bytes(data)
    if ignored is None:
        assert isinstance(events[0], SubscribeRequested)
    else:
        assert events == [FrameIgnored(ignored)]


def _garbage(rng: random.Random, depth: int = 0):
    kinds = ["int", "bigint", "float", "str", "null", "bool", "list", "dict", "json"]
    kind = rng.choice(kinds if depth < 4 else kinds[:6])
    if kind == "int":
        return rng.randint(-(2**70), 2**70)
    if kind == "bigint":
        return 10 ** rng.randint(20, 400)
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 5e-324])
    if kind == "str":
        return "".join(chr(rng.choice([0, 34, 92, 0xE9, 0xD800, 0x1F600, rng.randint(32, 126)]))
                       for _ in range(rng.randint(0, 8)))
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {str(_garbage(rng, 4)): _garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return json.dumps(_garbage(rng, depth + 1))


def _odd_frames(rng: random.Random):
    commands = ["subscribe", "unsubscribe", "message", "Subscribe", "", None, 1, [], {}]
    identifiers = [IDENT, ODD_IDENT, "{}", "[]", "null", "1", "{", '{"a":NaN}', None, 5, [IDENT]]
    fixed = [
        "[" * 50_000, "{\"a\":" * 50_000, "9" * 5000, "1e999", "-1e999", "NaN", "Infinity",
        '{"command":"subscribe","identifier":"' + "[" * 50_000 + '"}', "\x00", "\ud800", "\"\"",
        '{"command":"message","identifier":%s,"data":"%s"}' % (json.dumps(IDENT), "[" * 5000),
        '{"command":"message","identifier":%s,"data":"{\\"action\\":1e400}"}' % json.dumps(IDENT),
        '{"command":"message","identifier":%s,"data":"{\\"action\\":\\"a\\",\\"n\\":%s}"}'
        % (json.dumps(IDENT), "7" * 5000),
    ]
    yield from fixed
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.5:
            obj = {"command": rng.choice(commands), "identifier": rng.choice(identifiers)}
            if rng.random() < 0.7:
                obj["data"] = _garbage(rng)
            if rng.random() < 0.3:
                obj["data"] = json.dumps({"action": _garbage(rng), "x": _garbage(rng)})
            yield json.dumps(obj)
        elif choice < 0.8:
            yield json.dumps(_garbage(rng))
        else:
            text = json.dumps({"command": "message", "identifier": IDENT, "data": "{}"})
            cut = rng.randint(0, len(text))
            yield text[:cut] + chr(rng.randint(0, 0x10FFFF)) + text[cut:]


def test_receive_never_raises_on_garbage():
    rng = random.Random(1234)
    conn = subscribed()
    seen = set()
    for text in _odd_frames(rng):
        events, replies = conn.receive(text)
        for event in events:
            seen.add(type(event))
            if isinstance(event, SubscribeRequested):
                conn.confirm(event.identifier) if rng.random() < 0.5 else conn.reject(event.identifier)
            if isinstance(event, FrameIgnored):
                assert isinstance(event.reason, str) and 0 < len(event.reason) < 200
        for reply in replies:
            reply.encode("utf-8")
            json.loads(reply)
        conn.receive_bytes(text.encode("utf-8", "surrogatepass"))
        if len(conn.subscribed) + len(conn.pending) > 20:
            conn = subscribed()
    assert FrameIgnored in seen and ActionReceived in seen
    for odd in (None, 3, b"{}", ["x"]):
        assert isinstance(conn.receive(odd)[0][0], FrameIgnored)
