"""Browsers on other sites: cross-site requests to /admin, and DNS rebinding.

A web page anywhere can make its visitor's browser send requests to the gateway. It
cannot read the answers (the gateway sends no CORS headers) or add a key, but a form
or `fetch(..., {mode: "no-cors"})` still delivers a POST, which on /admin unloads,
pins or reloads. So /admin refuses what a browser marks as coming from another site:
`Sec-Fetch-Site: cross-site` or `same-site`, or an `Origin` whose host is not the one
the request was sent to (`Host`, or `X-Forwarded-Host` from a proxy: a cross-site page
cannot set that header without a preflight the gateway never grants). Clients that are
not browsers send neither header. The /ui dashboard is same-origin.

DNS rebinding goes further: the attacker's name is made to resolve to the gateway, so
the page's requests are same-origin and it can read the answers. Only a gateway without
keys is exposed (the page has no key), so a keyless gateway answers only requests whose
`Host` it knows: IP literals, `localhost` (and `*.localhost`), its listen host and this
machine's host name, and `[gateway] allowed_hosts` (names, `*.example.com`, or `*` for
any; as Ollama's OLLAMA_ORIGINS and Django's ALLOWED_HOSTS). A request without `Host`
(HTTP/1.0) passes; /health always does. Refusals are 403 in the path's dialect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cortex.config import split_listen
from cortex.errors import CortexError, PermissionDenied
from cortex.gateway.auth import ADMIN_PREFIX, route_path

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    from cortex.config import GatewaySection

__all__ = ["HostNames", "OriginGuard", "host_name", "same_origin"]

UNCHECKED = frozenset({"/health"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_FOREIGN_SITES = frozenset({b"cross-site", b"same-site"})


def _split(host: str) -> tuple[str, str | None]:
    """A `Host` value's name (lower-cased, no IPv6 brackets) and port, if it has one."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") and rest[1:] else None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port or None
    return host, None  # a name, or an IPv6 literal without brackets


def host_name(host: str) -> str:
    """The name in a `Host` value, without its port or IPv6 brackets, lower-cased."""
    return _split(host)[0]


def same_origin(origin: bytes, hosts: list[bytes]) -> bool:
    """Whether `Origin` names one of the hosts the request was sent to. A host without a
    port matches an origin on its scheme's default port (a proxy may end TLS)."""
    try:
        parts = urlsplit(origin.decode("latin-1"))
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False  # "null" (a sandboxed or file: page), or nonsense
    effective = str(port or _DEFAULT_PORTS[parts.scheme])
    on_default = effective == _DEFAULT_PORTS[parts.scheme]
    for host in hosts:
        name, host_port = _split(host.decode("latin-1"))
        if name == parts.hostname and (host_port == effective
                                       or (host_port is None and on_default)):
            return True
    return False


class HostNames:
    """The `Host` names a keyless gateway answers (see the module)."""

    def __init__(self, settings: GatewaySection) -> None:
        listen = split_listen(settings.listen)[0].lower()
        machine = socket.gethostname().lower()
        names = {"localhost", machine, machine.split(".", 1)[0]}
        if listen not in ("0.0.0.0", "::", ""):
            names.add(listen)
        self.any = "*" in settings.allowed_hosts
        self.names = frozenset(names | {h.lower() for h in settings.allowed_hosts
                                        if not h.startswith("*")})
        self.suffixes = (".localhost", *(h[1:].lower() for h in settings.allowed_hosts
                                         if h.startswith("*.")))

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if self.any or name in self.names or name.endswith(self.suffixes):
            return True
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            return False
        return True


class OriginGuard:
    """ASGI middleware: refuse cross-site /admin requests, and (without keys) unknown
    `Host` names. `settings` and `keyed` are called per request, so a reload applies;
    `respond` renders an error in the dialect that owns the path."""

    def __init__(self, app: ASGIApp, *, settings: Callable[[], GatewaySection],
                 keyed: Callable[[], bool],
                 respond: Callable[[str, CortexError], Response]) -> None:
        self.app = app
        self.settings = settings
        self.keyed = keyed
        self.respond = respond
        self._hosts: tuple[GatewaySection, HostNames] | None = None

    def _names(self) -> HostNames:
        settings = self.settings()
        if self._hosts is None or self._hosts[0] is not settings:
            self._hosts = (settings, HostNames(settings))
        return self._hosts[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        if scope["type"] == "http" and path not in UNCHECKED:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await self.respond(path, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, path: str) -> PermissionDenied | None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        host = headers.get(b"host")
        if host is not None and not self.keyed() \
                and not self._names().allows(host.decode("latin-1")):
            return PermissionDenied(
                f"this gateway has no keys and does not answer for the host "
                f"`{host_name(host.decode('latin-1'))[:100]}`: add it to [gateway] "
                "allowed_hosts")
        if not path.startswith(ADMIN_PREFIX):
            return None
        if headers.get(b"sec-fetch-site") in _FOREIGN_SITES:
            return PermissionDenied("admin requests from another site's page are refused")
        origin = headers.get(b"origin")
        if origin is not None:
            hosts = [h for h in (host, headers.get(b"x-forwarded-host")) if h]
            if not same_origin(origin, hosts):
                return PermissionDenied("admin requests from another origin are refused "
                                        "(Origin is not this gateway)")
        return None
