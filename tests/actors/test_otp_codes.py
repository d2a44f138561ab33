"""The pure parts of OTP: codes, their digest, the SMS text, the template setting, the
rolling-hour arithmetic and the wall clock that follows Trio's clock."""

import hashlib
import hmac
import re
from datetime import datetime, timedelta, timezone

import pytest

from actors import otp
from actors.clock import WallClock
from actors.otp import code_digest, new_code, render_text
from config import ConfigError, load_settings
from store.otp import retry_after

SECRET = b"test-secret-key-base-0123456789"
T0 = datetime(2025, 10, 19, 10, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize("drawn, code", [(0, "000000"), (7, "000007"), (42, "000042"), (123456, "123456"),
                                         (999_999, "999999")])
def test_new_code_is_six_digits_with_leading_zeros(monkeypatch, drawn, code):
    draws = []
    monkeypatch.setattr(otp.secrets, "randbelow", lambda n: draws.append(n) or drawn)
    assert new_code() == code
    assert draws == [10**6]


def test_new_codes_are_six_digit_strings_and_vary():
    codes = [new_code() for _ in range(200)]
    assert all(re.fullmatch(r"[0-9]{6}", c) for c in codes)
    assert len(set(codes)) > 150


def test_digest_is_hmac_sha256_of_phone_purpose_and_code():
    expected = hmac.new(SECRET, b"+14155552671\x00authentication\x00123456", hashlib.sha256).hexdigest()
    assert code_digest(SECRET, "+14155552671", "authentication", "123456") == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert "123456" not in expected


DIGEST_CHANGES = [
    ("other code", (SECRET, "+14155552671", "authentication", "123457")),
    ("other phone", (SECRET, "+14155552672", "authentication", "123456")),
    ("other purpose", (SECRET, "+14155552671", "login", "123456")),
    ("other secret", (b"another-secret-key-base-012345", "+14155552671", "authentication", "123456")),
    ("fields shifted across the separator", (SECRET, "+14155552671", "authentication\x001", "23456")),
]


@pytest.mark.parametrize("args", [a for _, a in DIGEST_CHANGES], ids=[i for i, _ in DIGEST_CHANGES])
def test_digest_changes_with_every_input(args):
    assert code_digest(*args) != code_digest(SECRET, "+14155552671", "authentication", "123456")


@pytest.mark.parametrize("template, purpose, text", [
    ("Your verification code is: {code}", "authentication", "Your verification code is: 123456"),
    ("{code} is your {purpose} code", "login", "123456 is your login code"),
    ("Code {code}. Not you? Ignore this. ({purpose})", "reset", "Code 123456. Not you? Ignore this. (reset)"),
    ("{code}{code}", "x", "123456123456"),
])
def test_text_fills_code_and_purpose(template, purpose, text):
    assert render_text(template, "123456", purpose) == text


def test_text_keeps_braces_in_the_purpose_as_they_are():
    assert render_text("{code} for {purpose}", "123456", "{code}") == "123456 for {code}"


def settings_with(template: str | None):
    env = {"SMSGW_ENV": "test"}
    if template is not None:
        env["OTP_MESSAGE_TEMPLATE"] = template
    return load_settings(env)


def test_template_setting_defaults_to_the_seed_text():
    assert settings_with(None).otp_message_template == "Your verification code is: {code}"


@pytest.mark.parametrize("template", ["Your code: {code}", "{purpose}: {code}", "{code}", "Use {code} ({purpose})"])
def test_template_setting_accepts_code_and_purpose(template):
    assert settings_with(template).otp_message_template == template


@pytest.mark.parametrize("template, reason", [
    ("Your code is ready", "must contain {code}"),
    ("For {purpose} only", "must contain {code}"),
    ("{code} for {user}", "only {code} and {purpose}"),
    ("{code} {0}", "only {code} and {purpose}"),
    ("{code} {}", "only {code} and {purpose}"),
    ("{code!r}", "only {code} and {purpose}"),
    ("{code:>8}", "only {code} and {purpose}"),
    ("{code.real}", "only {code} and {purpose}"),
    ("{code", "not a valid template"),
    ("code}", "not a valid template"),
    ("{code}" + "x" * 500, "at most 500"),
])
def test_template_setting_rejects_bad_templates(template, reason):
    with pytest.raises(ConfigError) as exc:
        settings_with(template)
    assert exc.value.variable == "OTP_MESSAGE_TEMPLATE"
    assert reason in exc.value.reason


RETRY_AFTER = [
    # (id, send times in seconds after T0 newest first, limit, now in seconds, expected)
    ("nothing sent", [], 3, 0, None),
    ("two of three", [100, 50], 3, 200, None),
    ("three: until the oldest leaves", [1200, 600, 0], 3, 1800, 1800),
    ("three at once", [0, 0, 0], 3, 0, 3600),
    ("one second before the oldest leaves", [1200, 600, 0], 3, 3599, 1),
    ("a fraction of a second rounds up", [1200, 600, 0], 3, 3599.5, 1),
    ("a fraction over whole seconds rounds up", [1200, 600, 0.25], 3, 1800, 1801),
    ("more than the limit: the limit-th newest counts", [3000, 2000, 1000, 0], 3, 3100, 1500),
    ("limit one", [10], 1, 20, 3590),
    ("limit zero means none", [0, 0, 0, 0], 0, 0, None),
]


@pytest.mark.parametrize("sent, limit, now, expected", [r[1:] for r in RETRY_AFTER], ids=[r[0] for r in RETRY_AFTER])
def test_retry_after_is_the_wait_until_a_send_leaves_the_hour(sent, limit, now, expected):
    assert retry_after([at(s) for s in sent], limit, at(now)) == expected


async def test_wall_clock_moves_with_trio_clock(mock_clock):
    clock = WallClock(anchor_wall=T0)
    assert clock.now() == T0
    mock_clock.jump(299.5)
    assert clock.now() == at(299.5)
    mock_clock.jump(3600)
    assert clock.now() == at(3899.5)
    assert clock.now().tzinfo is not None and clock.now().utcoffset() == timedelta(0)


async def test_wall_clock_starts_at_the_real_time():
    before = datetime.now(timezone.utc)
    now = WallClock().now()
    assert before - timedelta(seconds=1) <= now <= datetime.now(timezone.utc) + timedelta(seconds=1)
