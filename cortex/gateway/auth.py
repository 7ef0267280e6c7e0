"""Client and admin API keys on the gateway.

Keys come from `[auth] api_keys`, the file `api_keys_file` (one key a line, `#` starts a
comment) and the CORTEX_API_KEYS environment variable (comma-separated); admin keys
from `admin_keys` and CORTEX_ADMIN_KEYS. Once any key is configured, every route but
/health and the /ui dashboard's static files needs one, and /admin needs an admin key
(the dashboard sends the key its user types in). Keys arrive as
`Authorization: Bearer KEY` or `x-api-key: KEY` (the Anthropic SDK's header).
Comparison is constant-time against every configured key, so timing tells nothing
about which key was close.

Each key may also be capped at `max_concurrent_requests` at once (429 beyond), counted
from the moment its request is let in until its answer ends, so one key cannot hold
every connection (stalled bodies included). The guard leaves, in the request's state,
who the client is (its key, or its address on an open gateway) for cortex.gateway.fairshare.

Keys fail closed: a keys file that is named but unreadable or empty is a ConfigError
(start refused, a reload refused with the old keys kept), never a gateway that has
silently become open. With no keys at all the gateway is open, as llama-swap and
Ollama are by default; `[auth] open = true` says that is meant, else every start and
reload logs a warning.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.config import AuthConfig
from cortex.errors import (
    AuthenticationFailed,
    ConfigError,
    CortexError,
    PermissionDenied,
    RateLimited,
)

__all__ = ["ALLOWED_MODELS", "CLIENT", "AuthGuard", "Grant", "KeyRing", "allowed_models",
           "client_of", "route_path"]

log = logging.getLogger("cortex.gateway.auth")

ADMIN_PREFIX = "/admin"
#: Where the guard leaves a key's model allow-list for the gateway (request.state).
ALLOWED_MODELS = "cortex_allowed_models"
#: Where the guard leaves who the client is, for fair turns (request.state).
CLIENT = "cortex_client"
OPEN_PATHS = frozenset({"/health", "/ui"})
#: The dashboard's static files (cortex.gateway.ui): they hold no data and no key.
OPEN_PREFIXES = ("/ui/",)


def _read_keys(path: str) -> list[str]:
    """The keys in `path`; a file that cannot be read, or holds none, is an error: it was
    named to hold keys, and losing them must not open the gateway."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"auth.api_keys_file: `{path}`: cannot read it ({reason}); "
                          "refusing to run without the keys it should hold") from None
    keys = [line.split("#", 1)[0].strip() for line in lines]
    if not any(keys):
        raise ConfigError(f"auth.api_keys_file: `{path}` holds no key; refusing to run "
                          "without the keys it should hold (for an open gateway, remove "
                          "api_keys_file and set [auth] open = true)")
    return [key for key in keys if key]


class Grant(NamedTuple):
    """What a request's key earned: the key (None on an open gateway), the models it may
    use (None: any) and how many requests it may have in flight (0: no cap)."""

    key: bytes | None
    models: frozenset[str] | None = None
    concurrent: int = 0


def _env_keys(name: str) -> list[str]:
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]


class KeyRing:
    """The keys of one configuration, and the per-key request counts for its limit.
    Raises ConfigError for a keys source that lost its keys, or `open` with keys."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        keys = list(config.api_keys) + _env_keys("CORTEX_API_KEYS")
        if config.api_keys_file is not None:
            keys += _read_keys(config.api_keys_file)
        self._admin = [k.encode() for k in config.admin_keys + _env_keys("CORTEX_ADMIN_KEYS")]
        self._clients = [k.encode() for k in keys] + [k.key.encode() for k in config.keys]
        self.declared_open = config.open
        if config.open and not self.open:
            raise ConfigError("auth.open: open = true, but keys are configured (in [auth] or "
                              "CORTEX_API_KEYS/CORTEX_ADMIN_KEYS): remove one or the other")
        self._limit = config.requests_per_minute
        self._limits = {k.key.encode(): k.requests_per_minute for k in config.keys
                        if k.requests_per_minute is not None}
        self._models = {k.key.encode(): frozenset(k.models) for k in config.keys if k.models}
        self._concurrent = config.max_concurrent_requests
        self._concurrents = {k.key.encode(): k.max_concurrent_requests for k in config.keys
                             if k.max_concurrent_requests is not None}
        self._clock = clock
        self._recent: dict[bytes, collections.deque[float]] = {}

    @property
    def open(self) -> bool:
        return not self._clients and not self._admin

    def announce(self, listen: str) -> None:
        """Log, at every start and reload, that the gateway is open: loudly unless
        `[auth] open = true` says it is meant."""
        if not self.open:
            log.info("API keys: %d client, %d admin", len(self._clients), len(self._admin))
        elif self.declared_open:
            log.info("the gateway is open ([auth] open = true): no key is asked for")
        else:
            log.warning("the gateway is OPEN: no API or admin keys are configured, so anyone "
                        "who can reach %s may use every model and /admin. Configure keys in "
                        "[auth], or set [auth] open = true if this is meant", listen)

    @staticmethod
    def _match(given: bytes, keys: list[bytes]) -> bytes | None:
        found = None
        for key in keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(given, key):
                found = key
        return found

    def check(self, given: bytes | None, *, admin: bool) -> frozenset[str] | None:
        """Raise the error the request earns, or return the models the key may use
        (None: any); counts the request toward the key's `requests_per_minute`."""
        grant = self.grant(given, admin=admin)
        if grant.key is not None and not admin:
            self.count(grant.key)
        return grant.models

    def grant(self, given: bytes | None, *, admin: bool) -> Grant:
        """Raise the authentication error the request earns, or say what its key may do."""
        if self.open:
            return Grant(None)
        if not given:
            raise AuthenticationFailed(
                "an API key is required (Authorization: Bearer KEY or x-api-key: KEY)")
        if admin:
            if self._match(given, self._admin) is None:
                if self._match(given, self._clients) is not None:
                    raise PermissionDenied("this route needs an admin key")
                raise AuthenticationFailed("invalid API key")
            return Grant(given)
        key = self._match(given, self._clients) or self._match(given, self._admin)
        if key is None:
            raise AuthenticationFailed("invalid API key")
        return Grant(key, self._models.get(key), self._concurrents.get(key, self._concurrent))

    def count(self, key: bytes) -> None:
        """Count a request toward the key's `requests_per_minute`; raise RateLimited over it."""
        limit = self._limits.get(key, self._limit)
        if not limit:
            return
        now = self._clock()
        recent = self._recent.setdefault(key, collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= limit:
            raise RateLimited(f"more than {limit} requests a minute for this key",
                              retry_after=max(1.0, recent[0] + 60 - now))
        recent.append(now)


def route_path(scope: Scope) -> str:
    """The path within this app: without the prefix it is mounted under (`root_path`),
    so `/llm/admin/fleet` is an admin route when the gateway is mounted at `/llm`."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):] or "/"
    return path


def presented_key(scope: Scope) -> bytes | None:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key") or None


class AuthGuard:
    """ASGI middleware. `keyring` is called per request, so a reload swaps the keys;
    `respond` renders an error in the dialect that owns the path. It counts each key's
    requests in flight itself, so the counts outlive a reload."""

    def __init__(self, app: ASGIApp, *, keyring: Callable[[], KeyRing],
                 respond: Callable[[str, CortexError], Response]) -> None:
        self.app = app
        self.keyring = keyring
        self.respond = respond
        self.in_flight: collections.Counter[bytes] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        admin = path.startswith(ADMIN_PREFIX)
        ring = self.keyring()
        held: bytes | None = None
        try:
            grant = ring.grant(presented_key(scope), admin=admin)
            if grant.key is not None and not admin:  # operators act whatever the traffic
                held = self._enter(grant)
                ring.count(grant.key)
        except CortexError as exc:
            if held is not None:
                self._leave(held)
            await self.respond(path, exc)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if grant.models is not None:
            state[ALLOWED_MODELS] = grant.models
        client = scope.get("client")  # an open gateway shares turns by address
        state[CLIENT] = grant.key if grant.key is not None else client[0] if client else None
        try:
            await self.app(scope, receive, send)
        finally:
            if held is not None:
                self._leave(held)

    def _enter(self, grant: Grant) -> bytes:
        """Count one request of the key in flight; RateLimited past its cap."""
        assert grant.key is not None
        if grant.concurrent and self.in_flight[grant.key] >= grant.concurrent:
            raise RateLimited(f"this key has {grant.concurrent} requests in flight already "
                              "(max_concurrent_requests)", retry_after=1.0)
        self.in_flight[grant.key] += 1
        return grant.key

    def _leave(self, key: bytes) -> None:
        self.in_flight[key] -= 1
        if not self.in_flight[key]:
            del self.in_flight[key]


def allowed_models(scope: Scope) -> frozenset[str] | None:
    """The models the request's key may use, or None when the key may use any."""
    allowed: frozenset[str] | None = scope.get("state", {}).get(ALLOWED_MODELS)
    return allowed


def client_of(state: dict[str, object]) -> object:
    """Who sent the request (its key, or its address on an open gateway), for fair turns."""
    return state.get(CLIENT)
