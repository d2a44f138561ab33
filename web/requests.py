"""Parsing a request into a typed model, and shaping answers: the one place bad input becomes
a 400 or a 422."""

from __future__ import annotations

import math
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from quart import current_app, request

from web.errors import ApiError

__all__ = ["BODY_LIMIT", "body_too_large", "check_json_request", "parse_json", "read_json_bytes", "parse_body", "parse_query",
           "page_count", "validation_error"]

M = TypeVar("M", bound=BaseModel)


def _region() -> str:
    return current_app.config["NODE"].settings.default_country_code


def validation_error(exc: ValidationError) -> ApiError:
    """A 422 whose message names the first bad field; all of them are in `details`."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        details.append({"field": field, "message": message})
    first = details[0]
    return ApiError(422, f"{first['field']}: {first['message']}", details=details)


BODY_LIMIT = 64 * 1024


def check_json_request(mimetype: str, content_length: int | None, limit: int) -> None:
    """400 for a content type other than JSON, 413 for a body declared past `limit` bytes."""
    if mimetype != "application/json":
        raise ApiError(400, "Content-Type must be application/json")
    if content_length is not None and content_length > limit:
        raise body_too_large(limit)


def body_too_large(limit: int) -> ApiError:
    """The 413 of a body past `limit` bytes."""
    return ApiError(413, f"Request body too large (limit {limit // 1024} KiB)")


async def read_json_bytes(limit: int = BODY_LIMIT) -> bytes:
    """The raw JSON body: 400 for a wrong content type, 413 past `limit` bytes."""
    check_json_request(request.mimetype, request.content_length, limit)
    raw = await request.get_data()
    if len(raw) > limit:
        raise body_too_large(limit)
    return raw


async def parse_body(model: type[M], *, limit: int = BODY_LIMIT) -> M:
    """Read the JSON body into `model`: 400 for a wrong content type or malformed JSON, 422
    for a missing or wrongly typed field (naming it), 413 past the body limit."""
    return parse_json(model, await read_json_bytes(limit), _region())


def parse_json(model: type[M], raw: bytes, region: str) -> M:
    """`raw` JSON into `model`: 400 for malformed JSON or a body that is not an object, 422
    for a missing or wrongly typed field (naming it)."""
    try:
        return model.model_validate_json(raw or b"", strict=True, context={"region": region})
    except ValidationError as exc:
        kinds = {err["type"] for err in exc.errors()}
        if "json_invalid" in kinds:
            raise ApiError(400, "Malformed JSON body") from None
        if "model_type" in kinds or "model_attributes_type" in kinds:
            raise ApiError(400, "JSON body must be an object") from None
        raise validation_error(exc) from None


def parse_query(model: type[M]) -> M:
    """Read the query string into `model` (lax types: it is all text); 422 on a bad value."""
    data = {key: request.args.get(key) for key in request.args}
    try:
        return model.model_validate(data, context={"region": _region()})
    except ValidationError as exc:
        raise validation_error(exc) from None


def page_count(total: int, limit: int) -> int:
    """Pages needed for `total` items at `limit` a page; at least 1."""
    return max(1, math.ceil(total / limit))
