"""OTP APIs (client key with the `otp` scope): send a one-time password, verify it.

The routes validate and authorise, then ask the node's OtpActor through its mailbox; the
rules (limits, expiry, attempts, single use) live in the actor and the store.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from quart import Blueprint, current_app, g

from actors.otp import Limited, OtpBusy
from store.outbox import iso
from web.auth import require_client
from web.errors import ApiError
from web.models import Phone
from web.openapi import documented
from web.requests import parse_body

__all__ = ["blueprint", "OtpSendRequest", "OtpSendResponse", "OtpVerifyRequest", "OtpVerifyResponse"]

blueprint = Blueprint("otp", __name__, url_prefix="/api/v1/otp")

INVALID = "Invalid or expired OTP"
Purpose = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class OtpSendRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    phone_number: Phone
    purpose: Purpose = "authentication"
    expiry_minutes: Annotated[int, Field(ge=1, le=30)] = 5


class OtpSendResponse(BaseModel):
    success: bool
    expires_at: str = Field(description="ISO 8601, UTC")
    message_id: str = Field(description="the SMS carrying the code (see /api/v1/sms/status)")


class OtpVerifyRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    phone_number: Phone
    code: Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")] = Field(description="six digits, as a string")
    purpose: Purpose = "authentication"


class OtpVerifyResponse(BaseModel):
    success: bool
    verified: bool
    error: str | None = None
    attempts_remaining: int | None = Field(default=None, description="left on this code; 0: ask for a new one")


def _otp():
    return current_app.config["NODE"].otp


@blueprint.post("/send")
@documented(summary="Generate a one-time password and send it by SMS (at most 3 per phone number per hour)",
            body=OtpSendRequest, response=OtpSendResponse, errors=(429, 503), tag="otp")
async def send():
    key = await require_client("otp")
    body = await parse_body(OtpSendRequest)
    try:
        outcome = await _otp().send(body.phone_number, body.purpose, body.expiry_minutes, key.id)
    except OtpBusy:
        raise ApiError(503, "OTP service busy; try again", headers={"Retry-After": "1"}) from None
    headers = dict(g.get("rate_headers", {}))
    if isinstance(outcome, Limited):
        headers["Retry-After"] = str(outcome.retry_after)
        message = ("Too many OTP requests for this phone number; try again later" if outcome.reason == "phone"
                   else "OTP send limit for this API key reached; try again later")
        raise ApiError(429, message, headers=headers)
    return {"success": True, "expires_at": iso(outcome.expires_at), "message_id": outcome.message_id}, 200, headers


@blueprint.post("/verify")
@documented(summary="Verify a one-time password (200 either way; `verified` says which)",
            body=OtpVerifyRequest, response=OtpVerifyResponse, errors=(503,), tag="otp")
async def verify():
    key = await require_client("otp")
    body = await parse_body(OtpVerifyRequest)
    try:
        checked = await _otp().verify(body.phone_number, body.purpose, body.code, api_key_id=key.id)
    except OtpBusy:
        raise ApiError(503, "OTP service busy; try again", headers={"Retry-After": "1"}) from None
    if checked.verified:
        answer = {"success": True, "verified": True}
    else:
        answer = {"success": False, "verified": False, "error": INVALID,
                  "attempts_remaining": checked.attempts_remaining}
    return answer, 200, g.get("rate_headers", {})
