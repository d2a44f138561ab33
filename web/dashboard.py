"""`GET /admin`: the operators' live dashboard, one static page (web/static/admin.*).

The page holds no secret and needs none to load; the operator pastes an admin client key,
which the page keeps in sessionStorage and sends to the admin API like any client would. A
strict Content-Security-Policy (scripts and styles from this origin only, no inline code)
means a device name that looks like HTML can never run as code, even if some future change
forgot to escape it.
"""

from __future__ import annotations

from quart import Blueprint

__all__ = ["blueprint", "PAGE_HEADERS"]

blueprint = Blueprint("dashboard", __name__, static_folder="static", static_url_path="/admin/static")

PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                                " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@blueprint.get("/admin")
async def admin_page():
    response = await blueprint.send_static_file("admin.html")
    response.headers.update(PAGE_HEADERS)
    return response
