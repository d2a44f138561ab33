"""The Quart-Trio application: blueprints, CORS, body limits and the one place where errors
become `{"error": "…"}` JSON. No business rule lives here."""

from __future__ import annotations

import logging

import quart_cors
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.node import Node
from store.pool import StoreUnavailable
from web import admin_api, cable, direct_send, gateway_api, otp_api, outbound_api, sms_api, webhooks_api
from web import dashboard
from web import metrics as metrics_web
from web.errors import ApiError
from web.openapi import DOCS_PAGE, build_spec

__all__ = ["BODY_TOO_LARGE", "create_app", "create_asgi", "MAX_BODY_BYTES", "MAX_BULK_BODY_BYTES"]

log = logging.getLogger("smsgw.web")
MAX_BODY_BYTES = 64 * 1024            # every JSON endpoint (web/requests.py enforces it)
MAX_BULK_BODY_BYTES = 1024 * 1024     # sms/send_bulk; the server refuses anything larger
BODY_TOO_LARGE = f"Request body too large (limit {MAX_BULK_BODY_BYTES // 1024} KiB)"
EXPOSED_HEADERS = ["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]


def create_asgi(node: Node):
    """What the server runs for `node`: `/cable` WebSockets go straight to the cable (no Quart
    layer per frame, see web/cable_socket.py), single sends without CORS straight to their
    route (web/direct_send.py), everything else to the Quart app."""
    app = create_app(node)

    async def serve(scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"] == direct_send.PATH and scope["method"] == "POST" and not any(
                name == b"origin" for name, _ in scope["headers"]):
            await direct_send.serve_send(node, scope, receive, send)  # the busiest route, without Quart
        elif kind == "websocket" and scope["path"] == cable.PATH:
            await cable.serve_cable(node, scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


def create_app(node: Node) -> QuartTrio:
    """The Quart app serving REST (and the dashboard) for `node`."""
    app = QuartTrio("smsgw")
    app.config.update(NODE=node, MAX_CONTENT_LENGTH=MAX_BULK_BODY_BYTES, PROVIDE_AUTOMATIC_OPTIONS=True,
                      JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    for blueprint in (gateway_api.blueprint, sms_api.blueprint, outbound_api.blueprint, otp_api.blueprint, admin_api.blueprint,
                      webhooks_api.blueprint, metrics_web.blueprint, dashboard.blueprint):
        app.register_blueprint(blueprint)
    app.after_request(metrics_web.count_request)  # smsgw_http_requests_total{route,method,status}

    origins = node.settings.allowed_origins
    quart_cors.cors(app, allow_origin="*" if origins == ("*",) else list(origins),
                    allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                    allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
                    expose_headers=EXPOSED_HEADERS, max_age=600)
    apply_cors = app.after_request_funcs[None].pop()  # the hook quart_cors just registered

    @app.after_request
    async def cors_for_browsers(response: Response) -> Response:
        # Only a browser's cross-origin request carries Origin, and only it needs the CORS
        # headers; for the rest (phones, servers) quart_cors would re-read its settings on
        # every response (2-3 % of a single send's CPU) to add `Vary: Origin` alone.
        if "Origin" in request.headers:
            return await apply_cors(response)
        response.vary.add("Origin")
        return response

    @app.get("/up")
    async def up():
        if await node.store.ping():
            return {"status": "ok"}
        return {"status": "unavailable", "error": "database unavailable"}, 503

    @app.get("/openapi.json")
    async def openapi():
        return build_spec(app)

    @app.get("/docs")
    async def docs():
        return Response(DOCS_PAGE, content_type="text/html; charset=utf-8")

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError):
        return exc.body(), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException):
        messages = {404: "Not found", 405: "Method not allowed", 413: BODY_TOO_LARGE}
        headers = {}
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        return {"error": messages.get(exc.code, exc.description or exc.name)}, exc.code, headers

    @app.errorhandler(StoreUnavailable)
    async def store_down(exc: StoreUnavailable):
        log.warning("database unavailable: %s", exc)
        return {"error": "Service temporarily unavailable (database)"}, 503, {"Retry-After": "5"}

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return {"error": "Internal server error"}, 500

    return app
