"""The gateway: create_app(config, plugin_manager) and the Gateway object behind it.

The Gateway owns this process's parts (fleet view, loader, router, proxy,
reconciler) and the decisions that glue them: which profile a name means, whether a
request may queue, where it goes. It keeps nothing a neuron cannot tell it again.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence

import msgspec
import pluggy
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex.config import GatewayConfig, GatewaySection, ModelProfile
from cortex.dialect import Call, CatalogueEntry, Dialect
from cortex.errors import (
    ConfigError,
    CortexError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
)
from cortex.gateway.auth import AuthGuard, KeyRing, allowed_models
from cortex.gateway.catalogue import build_catalogue
from cortex.gateway.fairshare import FairShare
from cortex.gateway.fleet import Fleet
from cortex.gateway.limits import BodyLimits, HeadLimit
from cortex.gateway.loader import Loader
from cortex.gateway.metrics import METRICS_PLUGIN, GatewayMetrics
from cortex.gateway.openapi import openapi_document
from cortex.gateway.origins import OriginGuard
from cortex.gateway.placement import Placer
from cortex.gateway.prefixes import PrefixTable
from cortex.gateway.profiles import ProfileIndex
from cortex.gateway.proxy import Proxy
from cortex.gateway.quarantine import Quarantine
from cortex.gateway.reconciler import Reconciler
from cortex.gateway.state import LiveConfig, Reloader
from cortex.gateway.traffic import TRAFFIC_PLUGIN, Traffic
from cortex.plugins import Plugins, build_options
from cortex.records import log_value
from cortex.router import Router
from cortex.stops import check_stops

__all__ = ["Gateway", "Reloader", "create_app"]

log = logging.getLogger("cortex.gateway")
#: A client's `x-request-id` that is kept (else a fresh one is made).
_PRINTABLE = re.compile(rb"[\x20-\x7e]{1,128}")

def _profiles_of(config: GatewayConfig, profiles: Sequence[ModelProfile] | None
                 ) -> list[ModelProfile]:
    if profiles is not None:
        return list(profiles)
    if isinstance(config.models, str):
        raise ConfigError(f"models = `{config.models}` names a file: load it with "
                          "load_gateway_config and pass the profiles")
    return list(config.models)


class Gateway:
    def __init__(self, config: GatewayConfig, profiles: Sequence[ModelProfile],
                 plugins: Plugins, *, reloader: Reloader | None = None) -> None:
        self.plugins = plugins
        self.hook = plugins.hook
        self.live = LiveConfig(config, profiles, plugins, reloader=reloader)
        self.fleet = Fleet(config.gateway, self.hook)
        self.loader = Loader(self.fleet, load_timeout=config.gateway.load_timeout)
        self.live.on_reload(self._apply)
        # Fair turns between clients on a busy model (held here, not in a neuron's FIFO).
        self.fair = FairShare(self.fleet.ready_slots)
        self.placer = placer = Placer(self.live, self.fleet, self.loader, self.fair)
        self.snapshot = placer.snapshot
        self.resolve = placer.resolve
        self.waiting = placer.waiting
        self.admit = placer.admit
        self.decide = placer.decide
        self.place = placer.place
        self.spill_if_queued = placer.spill_if_queued
        self.spill_decision = placer.spill_decision
        self.prefixes = PrefixTable()
        self.quarantine = Quarantine(lambda: self.settings)
        self.proxy = Proxy(self)
        self.reconciler = Reconciler(self)
        self.traffic = Traffic()  # recent rates for /admin/fleet; registered by create_app
        self.dialects = [cls(build_options(cls, {}, where="dialects"))
                         for cls in plugins.dialects.values()]

    @property
    def config(self) -> GatewayConfig:
        return self.live.config

    @property
    def keys(self) -> KeyRing:
        return self.live.keys

    @property
    def profiles(self) -> ProfileIndex:
        return self.live.profiles

    @property
    def router(self) -> Router:
        return self.live.router

    @property
    def settings(self) -> GatewaySection:
        return self.live.settings

    def _apply(self, config: GatewayConfig) -> None:
        self.fleet.settings = config.gateway
        self.loader.load_timeout = config.gateway.load_timeout
        self.fleet.configure(config.neurons)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.keys.announce(self.settings.listen)
        self.fleet.configure(self.config.neurons)
        self.reconciler.start()

    async def close(self) -> None:
        self.placer.close()
        await self.reconciler.close()
        await self.loader.close()
        await self.fleet.close()

    async def reload(self) -> str:
        """Re-read configuration and apply it; requests in flight carry on undisturbed."""
        return await self.live.reload()

    def set_pin(self, model: str, pinned: bool) -> ModelProfile:
        return self.live.set_pin(model, pinned)

    # --- views ----------------------------------------------------------------------------

    def catalogue(self) -> list[CatalogueEntry]:
        return build_catalogue(self.profiles, self.snapshot())

    def catalogue_entry(self, model: str) -> CatalogueEntry:
        entries = self.catalogue()
        for entry in entries:
            if model == entry.id or model in entry.aliases:
                return entry
        raise ModelNotFound(model)

    async def forward(self, call: Call, request: Request, dialect: Dialect) -> Response:
        allowed = allowed_models(request.scope)
        if allowed is not None and call.model not in allowed \
                and self.resolve(call.model)[0].id not in allowed:
            raise PermissionDenied(f"this API key may not use model `{call.model}`")
        return await self.proxy.forward(call, request, dialect)

    def check_stops(self, stops: str | Sequence[str] | msgspec.Raw | None,
                    field: str) -> None:
        check_stops(stops, field=field, max_strings=self.settings.max_stop_strings,
                    max_bytes=self.settings.max_stop_bytes)

    def dialect_for(self, path: str) -> Dialect | None:
        """The dialect with the longest path prefix matching `path` (for error envelopes)."""
        best: tuple[int, Dialect | None] = (-1, None)
        for dialect in self.dialects:
            for prefix in dialect.prefixes:
                if path.startswith(prefix) and len(prefix) > best[0]:
                    best = (len(prefix), dialect)
        return best[1]


class _RequestIds:
    """Give every response an `x-request-id` and a `request-id` (the client's own, or a
    fresh one): the OpenAI SDK reads the first, the Anthropic SDK the second. The
    client's is kept only when it is printable ASCII of at most 128 characters: it goes
    into headers to the neuron and back (where a control character is refused, which
    made it a 500) and into the request log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").strip()
        request_id = given.decode() if _PRINTABLE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                tag = request_id.encode()
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", tag), (b"request-id", tag)]}
            await send(message)

        await self.app(scope, receive, tagged)


def create_app(config: GatewayConfig, plugin_manager: pluggy.PluginManager, *,
               profiles: Sequence[ModelProfile] | None = None,
               reloader: Reloader | None = None) -> Starlette:
    """Build the gateway app. `profiles` defaults to the ones inline in `config`;
    `reloader` re-reads configuration for SIGHUP and POST /admin/reload."""
    from cortex.gateway.admin import admin_routes
    from cortex.gateway.ui import ui_routes

    plugins = Plugins(plugin_manager)
    plugins.validate()
    gateway = Gateway(config, _profiles_of(config, profiles), plugins, reloader=reloader)
    # The metrics observer holds this app's own MeterProvider, so it is an object
    # registered per app rather than as a default entry-point plugin.
    metrics: GatewayMetrics | None = None
    if not plugin_manager.is_blocked(METRICS_PLUGIN):
        metrics = GatewayMetrics(gateway.fleet.describe, lambda model: (
            gateway.profiles.get(model) is not None
            or bool(gateway.snapshot().placements_of(model))))
        plugin_manager.register(metrics, name=METRICS_PLUGIN)
    plugin_manager.register(gateway.traffic, name=TRAFFIC_PLUGIN)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()
            plugin_manager.unregister(gateway.traffic)
            if metrics is not None:
                plugin_manager.unregister(metrics)
                metrics.close()

    def envelope(request: Request, exc: CortexError) -> Response:
        dialect = gateway.dialect_for(request.url.path)
        if dialect is not None:
            return dialect.error_response(exc)
        return JSONResponse(exc.openai_envelope(), status_code=exc.status,
                            headers=exc.headers())

    async def on_cortex_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CortexError)
        return envelope(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = NotFound(f"no route {request.method} {request.url.path}") \
            if exc.status_code == 404 else InvalidRequest(f"{request.method} "
                                                          f"{request.url.path}: {exc.detail}")
        response = envelope(request, error)
        response.status_code = exc.status_code
        return response

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", log_value(request.url.path))
        return envelope(request, CortexError(f"internal error: {type(exc).__name__}"))

    async def health(request: Request) -> Response:
        up = sum(1 for n in gateway.snapshot().nodes if n.up)
        return JSONResponse({"status": "ok", "nodes_up": up, "nodes": len(gateway.fleet.names)})

    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes: list[BaseRoute] = [Route("/health", health), Route("/openapi.json", openapi)]
    for dialect in gateway.dialects:
        routes.extend(dialect.routes(gateway))
    routes.extend(admin_routes(gateway))
    routes.extend(ui_routes())
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={CortexError: on_cortex_error,
                                        HTTPException: on_http_error,
                                        Exception: on_unexpected})
    app.state.gateway = gateway
    # Served on [gateway] metrics_listen by cortex.gateway.server (None when blocked).
    app.state.metrics = metrics
    def refuse(path: str, exc: CortexError) -> Response:
        dialect = gateway.dialect_for(path)
        if dialect is not None:
            return dialect.error_response(exc)
        return JSONResponse(exc.openai_envelope(), status_code=exc.status,
                            headers=exc.headers())

    app.add_middleware(BodyLimits, settings=lambda: gateway.settings, respond=refuse)
    app.add_middleware(AuthGuard, keyring=lambda: gateway.keys, respond=refuse)
    app.add_middleware(OriginGuard, settings=lambda: gateway.settings,
                       keyed=lambda: not gateway.keys.open, respond=refuse)
    app.add_middleware(_RequestIds)
    app.add_middleware(HeadLimit, settings=lambda: gateway.settings, respond=refuse)
    return app
