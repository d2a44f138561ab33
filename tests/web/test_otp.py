"""One-time passwords: POST /api/v1/otp/send and /api/v1/otp/verify over HTTP on a real node,
the code read off a connected gateway's socket; then the clock-driven rules (expiry, the
sliding hour, cleanup) on the OtpActor itself under a MockClock moved by hand."""

import re
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest
import trio

from actors.clock import WallClock
from actors.otp import Issued, Limited, OtpActor
from config import load_settings
from store.pool import open_store
from tests.conftest import clean, node_env, phone, running_node, sql

TO = "+14155552671"
OTHER = "+14155552672"
INVALID = {"success": False, "verified": False, "error": "Invalid or expired OTP"}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def send_otp(server, key: str, **body):
    return await server.http.post("/api/v1/otp/send", json={"phone_number": TO, **body}, headers=auth(key))


async def verify_otp(server, key: str, code, **body):
    return await server.http.post("/api/v1/otp/verify", json={"phone_number": TO, "code": code, **body},
                                  headers=auth(key))


async def verified(server, key: str, code, **body) -> dict:
    r = await verify_otp(server, key, code, **body)
    assert r.status_code == 200, r.text
    return r.json()


def code_in(sms: dict) -> str:
    return re.fullmatch(r"Your verification code is: ([0-9]{6})", sms["message"]).group(1)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


@asynccontextmanager
async def gateway(server, device_id: str = "otp-phone"):
    async with phone(server, await server.register(device_id)) as p:
        yield p


async def sent_code(server, key: str, p, **body) -> tuple[dict, str]:
    """Send an OTP, take its SMS off the phone's socket, report it sent; the answer and code."""
    r = await send_otp(server, key, **body)
    assert r.status_code == 200, r.text
    sms = await p.next_sms()
    await p.report(sms["message_id"], "sent")
    return r.json(), code_in(sms)


# Sending and verifying

async def test_code_reaches_gateway_and_verifies_once(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        r = await send_otp(server, key, purpose="authentication", expiry_minutes=5)
        assert r.status_code == 200, r.text
        answer = r.json()
        sms = await p.next_sms()
    assert set(answer) == {"success", "expires_at", "message_id"} and answer["success"] is True
    assert answer["message_id"].startswith("msg_")
    expires_at = datetime.strptime(answer["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert timedelta(minutes=4, seconds=58) < expires_at - datetime.now(timezone.utc) <= timedelta(minutes=5)
    assert sms["action"] == "send_sms" and sms["message_id"] == answer["message_id"] and sms["recipient"] == TO
    assert await verified(server, key, code_in(sms)) == {"success": True, "verified": True}
    assert await verified(server, key, code_in(sms)) == {**INVALID, "attempts_remaining": 0}


async def test_otp_sms_is_high_priority_and_counted_in_stats(server):
    key, admin = server.client_key("otp"), server.client_key("admin")
    async with gateway(server) as p:
        answer, code = await sent_code(server, key, p)
        await verified(server, key, code)
    row = server.sql("SELECT priority, api_key_id IS NOT NULL AS owned FROM messages WHERE message_id = %s",
                     (answer["message_id"],))[0]
    assert row == {"priority": 0, "owned": True}
    stats = (await server.http.get("/api/v1/admin/stats", headers=auth(admin))).json()
    assert stats["otp"] == {"sent_today": 1, "verified_today": 1, "verification_rate": 100.0}


async def test_phone_number_is_normalised_to_e164(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        r = await send_otp(server, key, phone_number="(415) 555-2671")
        assert r.status_code == 200, r.text
        sms = await p.next_sms()
    assert sms["recipient"] == TO
    assert await verified(server, key, code_in(sms), phone_number="415-555-2671") == {"success": True, "verified": True}


async def test_wrong_code_counts_down_attempts_then_even_right_code_fails(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, code = await sent_code(server, key, p)
    for remaining in (2, 1, 0):
        assert await verified(server, key, wrong(code)) == {**INVALID, "attempts_remaining": remaining}
    assert await verified(server, key, code) == {**INVALID, "attempts_remaining": 0}
    assert server.sql("SELECT attempts_remaining, verified_at FROM otp_codes") == [
        {"attempts_remaining": 0, "verified_at": None}]


async def test_right_code_on_the_last_attempt_verifies(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, code = await sent_code(server, key, p)
    await verified(server, key, wrong(code))
    await verified(server, key, wrong(code))
    assert await verified(server, key, code) == {"success": True, "verified": True}


async def test_a_code_belongs_to_the_key_that_sent_it(server):
    """Two applications on one gateway: neither can verify, spend or replace the other's code."""
    app_a, app_b = server.client_key("otp", name="a"), server.client_key("otp", name="b")
    async with gateway(server) as p:
        _, code_a = await sent_code(server, app_a, p)
        assert await verified(server, app_b, code_a) == {**INVALID, "attempts_remaining": 0}
        assert await verified(server, app_b, wrong(code_a)) == {**INVALID, "attempts_remaining": 0}
        _, code_b = await sent_code(server, app_b, p)  # B's own code leaves A's open
        assert await verified(server, app_a, code_a) == {"success": True, "verified": True}
        assert await verified(server, app_b, code_b) == {"success": True, "verified": True}
    assert [r["attempts_remaining"] for r in server.sql("SELECT attempts_remaining FROM otp_codes ORDER BY id")] == [2, 2]


async def test_new_code_replaces_the_open_one(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, first = await sent_code(server, key, p)
        _, second = await sent_code(server, key, p)
    if first == second:
        pytest.skip("two equal random codes in a row (one chance in a million)")
    assert await verified(server, key, first) == {**INVALID, "attempts_remaining": 2}
    assert await verified(server, key, second) == {"success": True, "verified": True}
    rows = server.sql("SELECT superseded_at IS NOT NULL AS superseded, verified_at IS NOT NULL AS verified"
                      " FROM otp_codes ORDER BY id")
    assert rows == [{"superseded": True, "verified": False}, {"superseded": False, "verified": True}]


async def test_codes_of_different_purposes_are_separate(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, login = await sent_code(server, key, p, purpose="login")
        _, default = await sent_code(server, key, p)
    assert await verified(server, key, default, purpose="login") == {**INVALID, "attempts_remaining": 2}
    assert await verified(server, key, login, purpose="login") == {"success": True, "verified": True}
    assert await verified(server, key, default) == {"success": True, "verified": True}


async def test_verify_with_no_code_sent_is_the_generic_failure(server):
    key = server.client_key("otp")
    assert await verified(server, key, "123456") == {**INVALID, "attempts_remaining": 0}


async def test_template_setting_shapes_the_sms(database_url):
    clean(database_url)
    async with running_node(database_url, OTP_MESSAGE_TEMPLATE="{code} is your {purpose} code") as server:
        key = server.client_key("otp")
        async with gateway(server) as p:
            r = await send_otp(server, key, purpose="login")
            assert r.status_code == 200, r.text
            sms = await p.next_sms()
        assert re.fullmatch(r"[0-9]{6} is your login code", sms["message"])


async def test_stored_rows_hold_no_code(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, code = await sent_code(server, key, p)
    for table in ("otp_codes", "otp_sends"):
        rows = server.sql(f"SELECT * FROM {table}")
        assert len(rows) == 1
        assert all(code not in str(value) for value in rows[0].values()), (table, rows)
    assert re.fullmatch(r"[0-9a-f]{64}", server.sql("SELECT code_hash FROM otp_codes")[0]["code_hash"])


# Concurrency

async def test_parallel_verifies_of_the_right_code_verify_exactly_once(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, code = await sent_code(server, key, p)
    answers = await in_parallel(20, lambda: verified(server, key, code))
    assert sum(a == {"success": True, "verified": True} for a in answers) == 1
    assert sum(a == {**INVALID, "attempts_remaining": 0} for a in answers) == 19
    assert server.sql("SELECT count(*) AS n FROM daily_counters WHERE name = 'otp_verified' AND value = 1")[0]["n"] == 1


async def test_parallel_wrong_codes_spend_attempts_exactly(server):
    key = server.client_key("otp")
    async with gateway(server) as p:
        _, code = await sent_code(server, key, p)
    answers = await in_parallel(20, lambda: verified(server, key, wrong(code)))
    assert sorted(a["attempts_remaining"] for a in answers) == [0] * 18 + [1, 2]
    assert all(a["verified"] is False for a in answers)
    assert server.sql("SELECT attempts_remaining FROM otp_codes") == [{"attempts_remaining": 0}]


async def test_parallel_sends_for_one_phone_accept_exactly_three(server):
    key = server.client_key("otp")
    responses = await in_parallel(10, lambda: send_otp(server, key))
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 7
    assert server.sql("SELECT count(*) AS n FROM otp_sends")[0]["n"] == 3
    assert server.sql("SELECT count(*) AS n FROM otp_codes WHERE superseded_at IS NULL")[0]["n"] == 1


async def in_parallel(n: int, call) -> list:
    results = []

    async def one():
        results.append(await call())

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


# Limits

async def test_fourth_send_in_an_hour_is_429_with_retry_after(server):
    key = server.client_key("otp")
    for _ in range(3):
        assert (await send_otp(server, key)).status_code == 200
    r = await send_otp(server, key)
    assert r.status_code == 429
    assert set(r.json()) == {"error"} and "phone number" in r.json()["error"]
    assert 3590 <= int(r.headers["Retry-After"]) <= 3600
    assert (await send_otp(server, key, phone_number=OTHER)).status_code == 200


async def test_per_key_limit_counts_sends_to_every_phone(database_url):
    clean(database_url)
    async with running_node(database_url, OTP_SENDS_PER_KEY_PER_HOUR="2") as server:
        key, other_key = server.client_key("otp"), server.client_key("otp")
        assert (await send_otp(server, key, phone_number=TO)).status_code == 200
        assert (await send_otp(server, key, phone_number=OTHER)).status_code == 200
        r = await send_otp(server, key, phone_number="+14155552673")
        assert r.status_code == 429 and "API key" in r.json()["error"]
        assert 3590 <= int(r.headers["Retry-After"]) <= 3600
        assert (await send_otp(server, other_key, phone_number="+14155552673")).status_code == 200


# Bad input

SEND_ERRORS = [
    ("missing phone", {"purpose": "authentication"}, 422, "phone_number"),
    ("bad phone", {"phone_number": "12"}, 422, "phone_number"),
    ("letters for a phone", {"phone_number": "call me"}, 422, "phone_number"),
    ("expiry 0", {"phone_number": TO, "expiry_minutes": 0}, 422, "expiry_minutes"),
    ("expiry 31", {"phone_number": TO, "expiry_minutes": 31}, 422, "expiry_minutes"),
    ("expiry as text", {"phone_number": TO, "expiry_minutes": "5"}, 422, "expiry_minutes"),
    ("expiry as a fraction", {"phone_number": TO, "expiry_minutes": 2.5}, 422, "expiry_minutes"),
    ("empty purpose", {"phone_number": TO, "purpose": ""}, 422, "purpose"),
    ("purpose of 65 characters", {"phone_number": TO, "purpose": "p" * 65}, 422, "purpose"),
    ("purpose with a control character", {"phone_number": TO, "purpose": "a\x00b"}, 422, "purpose"),
]


@pytest.mark.parametrize("body, status, field", [c[1:] for c in SEND_ERRORS], ids=[c[0] for c in SEND_ERRORS])
async def test_send_rejects_bad_input(server, body, status, field):
    r = await server.http.post("/api/v1/otp/send", json=body, headers=auth(server.client_key("otp")))
    assert r.status_code == status, r.text
    assert r.json()["error"].startswith(field)
    assert server.sql("SELECT count(*) AS n FROM otp_codes")[0]["n"] == 0


VERIFY_ERRORS = [
    ("five digits", {"phone_number": TO, "code": "12345"}, "code"),
    ("seven digits", {"phone_number": TO, "code": "1234567"}, "code"),
    ("letters", {"phone_number": TO, "code": "abcdef"}, "code"),
    ("code as a number", {"phone_number": TO, "code": 123456}, "code"),
    ("spaces around the code", {"phone_number": TO, "code": " 123456"}, "code"),
    ("missing code", {"phone_number": TO}, "code"),
    ("missing phone", {"code": "123456"}, "phone_number"),
    ("bad phone", {"phone_number": "12", "code": "123456"}, "phone_number"),
]


@pytest.mark.parametrize("body, field", [c[1:] for c in VERIFY_ERRORS], ids=[c[0] for c in VERIFY_ERRORS])
async def test_verify_rejects_bad_input_with_422(server, body, field):
    r = await server.http.post("/api/v1/otp/verify", json=body, headers=auth(server.client_key("otp")))
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(field)


@pytest.mark.parametrize("path", ["/api/v1/otp/send", "/api/v1/otp/verify"])
async def test_malformed_json_is_400(server, path):
    r = await server.http.post(path, content=b'{"phone_number": ', headers={
        **auth(server.client_key("otp")), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "Malformed JSON body"}


@pytest.mark.parametrize("path", ["/api/v1/otp/send", "/api/v1/otp/verify"])
async def test_missing_key_is_401(server, path):
    r = await server.http.post(path, json={"phone_number": TO, "code": "123456"})
    assert r.status_code == 401 and "error" in r.json()


@pytest.mark.parametrize("path", ["/api/v1/otp/send", "/api/v1/otp/verify"])
async def test_key_without_otp_scope_is_403(server, path):
    r = await server.http.post(path, json={"phone_number": TO, "code": "123456"},
                               headers=auth(server.client_key("sms")))
    assert r.status_code == 403 and r.json() == {"error": "This key lacks the 'otp' scope"}


async def test_gateway_key_is_403(server):
    r = await send_otp(server, await server.register("not-a-client"))
    assert r.status_code == 403 and "error" in r.json()


async def test_openapi_describes_both_routes(server):
    spec = (await server.http.get("/openapi.json")).json()
    assert "post" in spec["paths"]["/api/v1/otp/send"] and "post" in spec["paths"]["/api/v1/otp/verify"]


# Clock-driven rules, on the actor itself: MockClock() stands still until the test jumps it,
# so no deadline fires while a worker thread waits on PostgreSQL.

@asynccontextmanager
async def otp_actor(database_url: str, concurrency: int = 2):
    clean(database_url)
    settings = load_settings(node_env(database_url))
    async with open_store(database_url, size=concurrency + 2) as store:
        actor = OtpActor.create(store=store, settings=settings, clock=WallClock(), wake_dispatcher=lambda: None)
        actor.concurrency = concurrency
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            yield actor
            nursery.cancel_scope.cancel()


def code_of(database_url: str, issued: Issued) -> str:
    body = sql(database_url, "SELECT body FROM messages WHERE message_id = %s", (issued.message_id,))[0]["body"]
    return body.rsplit(" ", 1)[1]


async def test_code_expires_at_exactly_expiry_minutes(database_url, mock_clock):
    async with otp_actor(database_url) as actor:
        start = actor.clock.now()
        a = await actor.send(TO, "authentication", 5, None)
        b = await actor.send(OTHER, "authentication", 5, None)
        assert a.expires_at == start + timedelta(minutes=5)
        mock_clock.jump(5 * 60 - 1)
        assert (await actor.verify(TO, "authentication", code_of(database_url, a))).verified
        mock_clock.jump(1)
        late = await actor.verify(OTHER, "authentication", code_of(database_url, b))
        assert (late.verified, late.attempts_remaining) == (False, 0)


async def test_send_window_slides_after_an_hour(database_url, mock_clock):
    async with otp_actor(database_url) as actor:
        for _ in range(3):
            assert isinstance(await actor.send(TO, "authentication", 5, None), Issued)
            mock_clock.jump(10 * 60)
        assert await actor.send(TO, "authentication", 5, None) == Limited("phone", 30 * 60)
        mock_clock.jump(30 * 60 - 1)
        assert await actor.send(TO, "authentication", 5, None) == Limited("phone", 1)
        mock_clock.jump(1)
        assert isinstance(await actor.send(TO, "authentication", 5, None), Issued)
        # Now sent at 10, 20 and 60 minutes: the one at 10 leaves at 70.
        assert await actor.send(TO, "authentication", 5, None) == Limited("phone", 10 * 60)


async def test_cleanup_removes_codes_an_hour_past_their_end(database_url, mock_clock):
    async with otp_actor(database_url) as actor:
        spent = await actor.send(TO, "authentication", 5, None)
        assert (await actor.verify(TO, "authentication", code_of(database_url, spent))).verified
        await actor.send(OTHER, "authentication", 30, None)
        mock_clock.jump(60 * 60)
        assert await actor.cleanup_expired() == 1  # the spent one; the other expired 30 min ago
        mock_clock.jump(30 * 60)
        assert await actor.cleanup_expired() == 1
        assert sql(database_url, "SELECT count(*) AS n FROM otp_codes")[0]["n"] == 0
        assert sql(database_url, "SELECT count(*) AS n FROM otp_sends")[0]["n"] == 0


async def test_parallel_checks_spend_each_attempt_once_in_the_database(database_url):
    # Twenty checks at once, each on its own connection: only the row update orders them.
    async with otp_actor(database_url, concurrency=20) as actor:
        issued = await actor.send(TO, "authentication", 5, None)
        right = code_of(database_url, issued)
        results = await in_parallel(20, lambda: actor.verify(TO, "authentication", wrong(right)))
        assert sorted(r.attempts_remaining for r in results) == [0] * 18 + [1, 2]
        issued = await actor.send(TO, "authentication", 5, None)
        right = code_of(database_url, issued)
        results = await in_parallel(20, lambda: actor.verify(TO, "authentication", right))
        assert sum(r.verified for r in results) == 1
