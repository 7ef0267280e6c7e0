"""Client and admin API keys on the gateway.

Keys come from `[auth] api_keys`, the file `api_keys_file` (one key a line, `#` starts a
comment) and the CORTEX_API_KEYS environment variable (comma-separated); admin keys
from `admin_keys` and CORTEX_ADMIN_KEYS. With no keys at all the gateway is open, as
llama-swap and Ollama are by default; once any key is configured, every route but
/health and the /ui dashboard's static files needs one, and /admin needs an admin key
(the dashboard sends the key its user types in). Keys arrive as
`Authorization: Bearer KEY` or `x-api-key: KEY` (the Anthropic SDK's header).
Comparison is constant-time against every configured key, so timing tells nothing
about which key was close.
"""

from __future__ import annotations

import collections
import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path

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

__all__ = ["ALLOWED_MODELS", "AuthGuard", "KeyRing", "allowed_models"]

ADMIN_PREFIX = "/admin"
#: Where the guard leaves a key's model allow-list for the gateway (request.state).
ALLOWED_MODELS = "cortex_allowed_models"
OPEN_PATHS = frozenset({"/health", "/ui"})
#: The dashboard's static files (cortex.gateway.ui): they hold no data and no key.
OPEN_PREFIXES = ("/ui/",)


def _read_keys(path: str) -> list[str]:
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read api_keys_file: {exc.strerror}") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _env_keys(name: str) -> list[str]:
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]


class KeyRing:
    """The keys of one configuration, and the per-key request counts for its limit."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        keys = list(config.api_keys) + _env_keys("CORTEX_API_KEYS")
        if config.api_keys_file:
            keys += _read_keys(config.api_keys_file)
        self._admin = [k.encode() for k in config.admin_keys + _env_keys("CORTEX_ADMIN_KEYS")]
        self._clients = [k.encode() for k in keys] + [k.key.encode() for k in config.keys]
        self._limit = config.requests_per_minute
        self._limits = {k.key.encode(): k.requests_per_minute for k in config.keys
                        if k.requests_per_minute is not None}
        self._models = {k.key.encode(): frozenset(k.models) for k in config.keys if k.models}
        self._clock = clock
        self._recent: dict[bytes, collections.deque[float]] = {}

    @property
    def open(self) -> bool:
        return not self._clients and not self._admin

    @staticmethod
    def _match(given: bytes, keys: list[bytes]) -> bytes | None:
        found = None
        for key in keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(given, key):
                found = key
        return found

    def check(self, given: bytes | None, *, admin: bool) -> frozenset[str] | None:
        """Raise the error the request earns, or return the models the key may use
        (None: any)."""
        if self.open:
            return None
        if not given:
            raise AuthenticationFailed(
                "an API key is required (Authorization: Bearer KEY or x-api-key: KEY)")
        if admin:
            if self._match(given, self._admin) is None:
                if self._match(given, self._clients) is not None:
                    raise PermissionDenied("this route needs an admin key")
                raise AuthenticationFailed("invalid API key")
            return None
        key = self._match(given, self._clients) or self._match(given, self._admin)
        if key is None:
            raise AuthenticationFailed("invalid API key")
        self._count(key)
        return self._models.get(key)

    def _count(self, key: bytes) -> None:
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


def presented_key(scope: Scope) -> bytes | None:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key") or None


class AuthGuard:
    """ASGI middleware. `keyring` is called per request, so a reload swaps the keys;
    `respond` renders an error in the dialect that owns the path."""

    def __init__(self, app: ASGIApp, *, keyring: Callable[[], KeyRing],
                 respond: Callable[[str, CortexError], Response]) -> None:
        self.app = app
        self.keyring = keyring
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in OPEN_PATHS \
                and not path.startswith(OPEN_PREFIXES):
            try:
                allowed = self.keyring().check(presented_key(scope),
                                               admin=path.startswith(ADMIN_PREFIX))
                if allowed is not None:
                    scope.setdefault("state", {})[ALLOWED_MODELS] = allowed
            except CortexError as exc:
                await self.respond(path, exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_models(scope: Scope) -> frozenset[str] | None:
    """The models the request's key may use, or None when the key may use any."""
    allowed: frozenset[str] | None = scope.get("state", {}).get(ALLOWED_MODELS)
    return allowed
