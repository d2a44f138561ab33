"""OpenAPI 3.1, generated from the routes and the same pydantic models that validate them.

A route declares what it takes and answers with `@documented(...)`; `build_spec(app)` walks
the app's URL map and turns those declarations into the document served at /openapi.json.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel
from quart import Quart

from web.models import ErrorResponse

__all__ = ["documented", "build_spec", "DOCS_PAGE"]

F = TypeVar("F", bound=Callable[..., Any])

_ERROR_TEXT = {
    400: "Malformed JSON or wrong content type", 401: "Missing, unknown or revoked API key",
    403: "Key of the wrong kind or without the scope", 404: "Not found", 409: "Conflict",
    413: "Body too large", 422: "Validation error naming the field", 429: "Rate limit exceeded",
    503: "Database unavailable",
}


def documented(*, summary: str, response: type[BaseModel] | None = None, status: int = 200,
               body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
               auth: str | None = "client", errors: tuple[int, ...] = (), tag: str = "api") -> Callable[[F], F]:
    """Attach the OpenAPI description of a route to its function."""
    def mark(fn: F) -> F:
        fn.__openapi__ = dict(summary=summary, response=response, status=status, body=body,  # type: ignore[attr-defined]
                              query=query, auth=auth, errors=errors, tag=tag)
        return fn
    return mark


def build_spec(app: Quart, *, server_url: str = "/") -> dict:
    """The OpenAPI document for every documented route of `app`."""
    components: dict[str, Any] = {}
    paths: dict[str, dict] = {}

    def ref(model: type[BaseModel], mode: str) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode,
                                         by_alias=True)
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "__openapi__", None)
        if meta is None:
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for conv in ("int:", "string:", "path:"):
            path = path.replace("{" + conv, "{")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"summary": meta["summary"], "tags": [meta["tag"]],
                                  "operationId": f"{method.lower()}_{rule.endpoint.replace('.', '_')}"}
            params = [{"name": arg, "in": "path", "required": True,
                       "schema": {"type": "integer" if "int:" in rule.rule else "string"}}
                      for arg in rule.arguments]
            if meta["query"] is not None:
                for name, field in meta["query"].model_fields.items():
                    params.append({"name": field.alias or name, "in": "query", "required": False,
                                   "schema": meta["query"].model_json_schema()["properties"][name]})
            if params:
                op["parameters"] = params
            if meta["body"] is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": ref(meta["body"], "validation")}}}
            ok: dict[str, Any] = {"description": "Success"}
            if meta["response"] is not None:
                ok["content"] = {"application/json": {"schema": ref(meta["response"], "serialization")}}
            responses = {str(meta["status"]): ok}
            codes = set(meta["errors"])
            if meta["auth"]:
                codes |= {401, 403, 429}
            if meta["body"] is not None:
                codes |= {400, 413, 422}
            for code in sorted(codes):
                responses[str(code)] = {"description": _ERROR_TEXT.get(code, "Error"), "content": {
                    "application/json": {"schema": ref(ErrorResponse, "serialization")}}}
            op["responses"] = responses
            if meta["auth"]:
                op["security"] = [{"bearer": []}]
                op["description"] = f"Requires a {meta['auth']} key."
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "SMS gateway API", "version": "1.0.0",
                 "description": "Send SMS and one-time passwords through Android gateway phones."},
        "servers": [{"url": server_url}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.items())), "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "api_live_… for applications, gw_live_… for gateway phones"}}},
    }


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SMS gateway API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:0 .2em}h2{margin-top:2rem;border-bottom:1px solid #ddd}
.op{margin:.8rem 0;padding:.6rem;border:1px solid #e3e3e3;border-radius:6px}
.m{font-weight:700;text-transform:uppercase;margin-right:.5em}</style></head>
<body><h1>SMS gateway API</h1><p>Machine-readable: <a href="/openapi.json">/openapi.json</a></p>
<div id="ops">Loading…</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const out = [];
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const codes = Object.keys(op.responses).join(', ');
      out.push(`<div class="op"><span class="m">${method}</span><code>${path}</code>
        <div>${op.summary}</div><small>${op.description || ''} Answers: ${codes}</small></div>`);
    }
  }
  document.getElementById('ops').innerHTML = out.join('');
});
</script></body></html>
"""
