"""The /ui dashboard: a static page (HTML, JS, CSS shipped as package data, no build step)
that polls /admin/fleet, /v1/models and /admin/requests, calls the admin API from the
browser, and chats with a model in its playground. Every path the page uses is relative,
so it works unchanged behind a proxy that mounts the gateway under a prefix.

The page itself is open and holds no secret: when the gateway has keys, it asks for an
admin key and keeps it in the tab's sessionStorage, and every API call carries it, so
AuthGuard judges the calls exactly as it judges `cortex` CLI calls.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from cortex.errors import NotFound

__all__ = ["ASSETS", "UI_PREFIX", "ui_routes"]

UI_PREFIX = "/ui"
#: The files served under /ui/, and their content types; nothing else is.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Scripts and styles from this origin only, calls to this origin only: an injected
# model name cannot run code or send the key elsewhere.
_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _read(name: str) -> bytes:
    return files(__name__).joinpath(name).read_bytes()


def ui_routes() -> list[BaseRoute]:
    async def redirect(request: Request) -> Response:
        # Relative (`ui/` from `.../ui`), so a proxy's mount prefix is kept; so is the query.
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{UI_PREFIX[1:]}/{query}", status_code=307)

    async def asset(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        if name not in ASSETS:
            raise NotFound(f"no file `{name}` in the dashboard")
        return Response(_read(name), headers={**_HEADERS, "content-type": ASSETS[name]})

    return [
        Route(UI_PREFIX, redirect),
        Route(f"{UI_PREFIX}/", asset),
        Route(f"{UI_PREFIX}/{{name}}", asset),
    ]
