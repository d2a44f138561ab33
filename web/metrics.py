"""`GET /metrics`: this node's metrics in the Prometheus text format, and the hook that counts
every HTTP request by URL rule, method and status.

Open by default, like most exporters (keep the port off the public internet, or put it behind
the proxy's auth); with `METRICS_TOKEN` set it answers only `Authorization: Bearer <token>`
and gives 401 otherwise. The metric names are listed in actors/metrics.py.
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, request

from web.errors import ApiError

__all__ = ["blueprint", "count_request", "UNMATCHED_ROUTE"]

blueprint = Blueprint("metrics", __name__)
UNMATCHED_ROUTE = "<unmatched>"  # 404s: the raw path would give every scanner its own series


@blueprint.get("/metrics")
async def metrics():
    node = current_app.config["NODE"]
    token = node.settings.metrics_token
    if token is not None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise ApiError(401, "Missing or wrong metrics token: send Authorization: Bearer <METRICS_TOKEN>",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(generate_latest(node.metrics.registry), content_type=CONTENT_TYPE_LATEST)


async def count_request(response: Response) -> Response:
    """`after_request` hook: one `smsgw_http_requests_total` increment, no I/O."""
    node_metrics = current_app.config["NODE"].metrics
    if node_metrics is not None:
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        node_metrics.http_request(route, request.method, response.status_code)
    return response
