"""`POST /api/v1/sms/send` straight on ASGI, beside Quart, for the requests that send alone.

The busiest request of the API, and the one whose rate is the gateway's: Quart's per-request
machinery (a request object with title-cased headers, contexts, a nursery and two tasks, a
response object, after-request hooks) cost about a fifth of the server's CPU for each single
send. This is the same route on the same cores as `web/sms_api.send` (auth, rate limit,
validation, idempotency and the group commit are the functions that route calls), answering
with the same statuses, bodies and headers; web/app.py sends it every such request without an
`Origin` header (a browser's cross-origin call takes the Quart route, for its CORS headers).
"""

from __future__ import annotations

import json
import logging

from store.pool import StoreUnavailable
from store.sends import SendItem
from web.auth import client_for
from web.errors import ApiError
from web.models import SendRequest
from web.requests import BODY_LIMIT, body_too_large, check_json_request, parse_json
from web.sms_api import accept, idempotency_fields, new_message, single_answer

__all__ = ["PATH", "serve_send"]

log = logging.getLogger("smsgw.web")
PATH = "/api/v1/sms/send"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


async def serve_send(node, scope: dict, receive, send) -> None:
    """Answer one `POST /api/v1/sms/send` (an ASGI app for its scope)."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:  # (ASGI: names already lower-case)
        headers.setdefault(name, value)
    status, answer, extra = await _answer(node, headers, receive)
    body = (_ENCODER.encode(answer) + "\n").encode()
    response_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                        (b"vary", b"Origin")]
    response_headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    if node.metrics is not None:
        node.metrics.http_request(PATH, "POST", status)


async def _answer(node, headers: dict[bytes, bytes], receive) -> tuple[int, dict, dict[str, str]]:
    try:
        key, rate_headers = await client_for(node, headers.get(b"authorization", b"").decode("latin-1"), "sms")
        declared = headers.get(b"content-length")
        check_json_request(_mimetype(headers.get(b"content-type", b"")),
                           int(declared) if declared is not None and declared.isdigit() else None, BODY_LIMIT)
        raw = await _read_body(receive, BODY_LIMIT)
        body = parse_json(SendRequest, raw, node.settings.default_country_code)
        message = new_message(body, key.id, node.settings.message_ttl_seconds)
        idem = headers.get(b"idempotency-key")
        item = SendItem(key_id=key.id, messages=(message,), answer=single_answer,
                        **idempotency_fields(None if idem is None else idem.decode("latin-1"), raw))
        answer, status = await accept(node, item)
        return status, answer, rate_headers
    except ApiError as exc:
        return exc.status, exc.body(), exc.headers
    except StoreUnavailable as exc:
        log.warning("database unavailable: %s", exc)
        return 503, {"error": "Service temporarily unavailable (database)"}, {"Retry-After": "5"}
    except Exception:  # noqa: BLE001 - as web/app.py's last handler: a 500 in JSON, logged
        log.exception("unhandled error on POST %s", PATH)
        return 500, {"error": "Internal server error"}, {}


def _mimetype(content_type: bytes) -> str:
    """As werkzeug reads it: the type before any parameter, lower-cased."""
    return content_type.decode("latin-1").partition(";")[0].strip().lower()


async def _read_body(receive, limit: int) -> bytes:
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ApiError(400, "The request body did not arrive")  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
