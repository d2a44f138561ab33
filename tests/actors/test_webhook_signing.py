"""The pure parts of webhook delivery: signature, body bytes, headers, retry times."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from actors.webhooks import USER_AGENT, delivery_headers, encode_body, retry_at, sign

T0 = datetime(2025, 10, 19, 10, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("secret", "body", "expected"), [
    # RFC 4231, test case 2.
    ("Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("0123456789abcdef", b"", hmac.new(b"0123456789abcdef", b"", hashlib.sha256).hexdigest()),
    ("s\u00e9cret-\u00fcnicode-key", b'{"a":1}',
     hmac.new("s\u00e9cret-\u00fcnicode-key".encode(), b'{"a":1}', hashlib.sha256).hexdigest()),
    ("k" * 256, "\u00e9\u00e8".encode(), hmac.new(b"k" * 256, "\u00e9\u00e8".encode(), hashlib.sha256).hexdigest()),
])
def test_signature_is_hex_hmac_sha256_of_the_exact_body(secret, body, expected):
    assert sign(secret, body) == expected
    assert len(sign(secret, body)) == 64


def test_signature_changes_with_one_byte_of_body_or_secret():
    base = sign("0123456789abcdef", b'{"event":"ping"}')
    assert sign("0123456789abcdef", b'{"event":"ping"} ') != base
    assert sign("0123456789abcdeF", b'{"event":"ping"}') != base


@pytest.mark.parametrize(("payload", "expected"), [
    ({"event": "ping", "event_id": "evt_1", "timestamp": "T", "webhook_id": 3},
     b'{"event":"ping","event_id":"evt_1","timestamp":"T","webhook_id":3}'),
    # The head fields come first, whatever order the stored JSON has.
    ({"from": "+1", "timestamp": "T", "event": "sms_received", "message": "hi", "event_id": "evt_2"},
     b'{"event":"sms_received","event_id":"evt_2","timestamp":"T","from":"+1","message":"hi"}'),
    ({"event": "sms_received", "message": "caf\u00e9 \u2713"},
     '{"event":"sms_received","message":"caf\u00e9 \u2713"}'.encode()),
    ({"event": "sms_failed", "error_message": None, "reference": None},
     b'{"event":"sms_failed","error_message":null,"reference":null}'),
])
def test_body_is_compact_utf8_json_with_the_event_first(payload, expected):
    body = encode_body(payload)
    assert body == expected
    assert json.loads(body) == payload


def test_headers_carry_event_id_timestamp_and_signature_only_with_a_secret():
    signed = delivery_headers(event="sms_sent", event_id="evt_1", timestamp=1760869800, signature="ab" * 32)
    assert signed == {
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Webhook-Id": "evt_1",
        "X-Webhook-Timestamp": "1760869800", "X-Webhook-Event": "sms_sent", "X-Webhook-Signature": "ab" * 32,
    }
    unsigned = delivery_headers(event="sms_sent", event_id="evt_1", timestamp=1, signature=None)
    assert "X-Webhook-Signature" not in unsigned
    assert USER_AGENT == "smsgw-webhooks/1"


@pytest.mark.parametrize(("attempts", "rand", "seconds"), [
    (1, 0.5, 10.0), (2, 0.5, 60.0), (3, 0.5, 300.0), (4, 0.5, 1800.0),
    (5, 0.5, 7200.0), (6, 0.5, 21600.0), (7, 0.5, 43200.0),
    (1, 0.0, 9.0), (7, 0.0, 38880.0), (2, 0.75, 63.0),
])
def test_retry_follows_the_webhook_schedule_with_jitter(attempts, rand, seconds):
    assert retry_at(attempts, T0, lambda: rand) == T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize("attempts", [8, 9, 100])
def test_no_retry_after_the_eighth_attempt(attempts):
    assert retry_at(attempts, T0, lambda: 0.5) is None
