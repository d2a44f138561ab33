"""Request and response models: they validate requests and they are the OpenAPI schemas.

Requests are parsed in strict mode from the raw JSON, so a wrongly typed field is a 422 naming
the field, not a silent coercion. Phone numbers are normalised to E.164 with the region given
in the validation context (DEFAULT_COUNTRY_CODE).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints,
                      ValidationInfo, field_validator)

__all__ = [
    "normalise_phone", "RegisterRequest", "RegisterResponse", "HeartbeatRequest", "HeartbeatResponse",
    "InboundRequest", "InboundResponse", "StatusReportRequest", "SuccessResponse", "SendRequest",
    "SendResponse", "StatusResponse", "ReceivedQuery", "ReceivedResponse", "ErrorResponse",
    "GatewayOut", "GatewaysResponse", "ToggleResponse", "StatsResponse", "GatewayPatch",
    "GatewaysQuery",
]


class InvalidPhone(ValueError):
    pass


_E164 = re.compile(r"\+([1-9][0-9]{6,14})")


def normalise_phone(raw: str, region: str) -> str:
    """E.164 form of `raw`, read with `region` when it has no country code; ValueError if invalid."""
    match = _E164.fullmatch(raw)
    if match is not None:  # already E.164, as most API clients send: read without `parse`
        number = _from_e164(match.group(1))
        if number is not None and phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        # Anything else (an invalid number, a national prefix after the country code that
        # `parse` would drop) takes the whole way, and its answer or error.
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number ({exc._msg})") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhone("not a possible phone number (wrong length)")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number for its region")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _from_e164(digits: str) -> phonenumbers.PhoneNumber | None:
    """The number `+digits` as `phonenumbers.parse` reads it when nothing needs stripping:
    country codes are prefix-free, and a national number with leading zeros keeps them (the
    library's "Italian leading zero"). A third of the cost of `parse`, which mostly looks for
    extensions, punctuation and letters that an E.164 string cannot hold."""
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[length:]
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    if len(national) > 1 and national[0] == "0":
        number.italian_leading_zero = True
        zeros = len(national) - len(national.lstrip("0"))
        zeros = min(zeros, len(national) - 1)  # all zeros: the last one is the number
        if zeros != 1:
            number.number_of_leading_zeros = zeros
    return number


def _phone(value: str, info: ValidationInfo) -> str:
    region = (info.context or {}).get("region", "US")
    return normalise_phone(value, region)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


Phone = Annotated[str, StringConstraints(min_length=1, max_length=32), AfterValidator(_phone)]
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1600)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# Gateway device APIs

class RegisterRequest(_Request):
    device_id: DeviceId
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class RegisterResponse(_Response):
    success: bool
    api_key: str = Field(description="gw_live_… key, shown once")
    device_id: str
    websocket_url: str


class HeartbeatRequest(_Request):
    status: Literal["online", "offline"] | None = None
    messages_in_queue: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    battery_level: Annotated[int, Field(ge=0, le=100)] | None = None
    signal_strength: Annotated[int, Field(ge=0, le=5)] | None = None


class HeartbeatResponse(_Response):
    success: bool
    pending_messages: int


class InboundRequest(_Request):
    sender: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    message: Annotated[str, StringConstraints(max_length=10_000)]
    timestamp: UtcDatetime | None = None

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str, info: ValidationInfo) -> str:
        # Inbound senders may be alphanumeric (e.g. "BANK"): normalise numbers, keep names.
        try:
            return _phone(value, info)
        except InvalidPhone:
            if value.replace(" ", "").isalnum():
                return value
            raise


class InboundResponse(_Response):
    success: bool
    message_id: str


class StatusReportRequest(_Request):
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    status: Literal["sent", "delivered", "failed"]
    error_message: Annotated[str, StringConstraints(max_length=500)] | None = None


REPORT_STATUSES = frozenset({"sent", "delivered", "failed"})


def report_fields(data: dict) -> tuple[str, str, str | None]:
    """`(message_id, status, error_message)` of a delivery report, valid as StatusReportRequest
    says; raises its ValidationError otherwise. The common, valid report is checked by hand:
    two arrive over the cable for every message, and pydantic cost more than the rest of the
    frame. pydantic still words the refusal of a bad one."""
    message_id, status, error = data.get("message_id"), data.get("status"), data.get("error_message")
    if (type(message_id) is str and 0 < len(message_id) <= 64 and type(status) is str and status in REPORT_STATUSES
            and (error is None or (type(error) is str and len(error) <= 500))):
        return message_id, status, error
    body = StatusReportRequest.model_validate(data)
    return body.message_id, body.status, body.error_message


class SuccessResponse(_Response):
    success: bool


# Client application APIs

class SendRequest(_Request):
    to: Phone
    message: Text
    ttl_seconds: Annotated[int, Field(ge=60, le=7 * 86_400)] | None = None
    priority: Literal["high", "normal", "low"] = "normal"
    reference: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    send_at: UtcDatetime | None = None


class SendResponse(_Response):
    success: bool
    message_id: str
    status: str
    segments: int
    encoding: str


class StatusResponse(_Response):
    message_id: str
    status: str
    sent_at: str | None
    delivered_at: str | None
    failed_at: str | None
    error_message: str | None


class ReceivedQuery(_Request):
    model_config = ConfigDict(strict=False, extra="ignore")
    phone_number: Phone | None = None
    since: UtcDatetime | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    page: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class ReceivedMessage(_Response):
    message_id: str
    from_: str = Field(alias="from")
    message: str
    received_at: str


class ReceivedResponse(_Response):
    messages: list[ReceivedMessage]
    total: int
    page: int
    pages: int


# Admin APIs

class GatewayOut(_Response):
    id: int
    device_id: str
    name: str
    status: Literal["online", "offline"]
    last_heartbeat_at: str | None
    messages_sent_today: int
    messages_received_today: int
    total_messages_sent: int
    total_messages_received: int
    active: bool
    priority: int
    metadata: dict[str, Any]
    created_at: str


class GatewaysQuery(_Request):
    model_config = ConfigDict(strict=False, extra="ignore")
    status: Literal["online", "offline"] | None = None
    active: bool | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    page: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class GatewaysResponse(_Response):
    gateways: list[GatewayOut]
    total: int
    page: int
    pages: int


class GatewayPatch(_Request):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    priority: Annotated[int, Field(ge=0, le=1000)] | None = None
    active: bool | None = None
    send_rate_per_minute: Annotated[int, Field(ge=0, le=100_000)] | None = None
    metadata: dict[str, Any] | None = None


class ToggleGateway(_Response):
    id: int
    device_id: str
    active: bool


class ToggleResponse(_Response):
    success: bool
    gateway: ToggleGateway


class StatsResponse(_Response):
    gateways: dict[str, int]
    messages: dict[str, int]
    otp: dict[str, float]
    timestamp: str


class ErrorResponse(_Response):
    error: str
