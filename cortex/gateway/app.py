"""The composition root: create_app(config, plugin_manager) builds the gateway's parts
and wires them; nothing else in the project imports this module but the package, the
ASGI factory and the CLI, which build the app through it.

Each part is handed the parts it uses, never a bag of everything:

    LiveConfig   (state.py)       the config, profiles and pins, router, keys; reload
    Fleet        (fleet.py)       the polled view of the neurons, and their clients
    Loader       (loader.py)      single-flight loads
    FairShare    (fairshare.py)   fair turns between clients on a busy model
    Placer       (placement.py)   where a request goes, and how long it may wait
    Proxy        (proxy.py)       one request end to end
    Reconciler   (reconciler.py)  pins, TTL, defrag
    admin_routes (admin.py)       /admin
    Activity     (activity.py)    the last requests, GET /admin/requests
    _DialectAPI  (here)           what the dialects' routes may ask (cortex.dialect.GatewayAPI)

`app.state` carries the parts for `cortex serve`, embedding apps and tests: `live`,
`placer`, `fleet`, `loader`, `fair`, `prefixes`, `quarantine`, `traffic`, `activity`,
`dialects`, `events` (GET /admin/events) and `metrics` (None when its plugin is blocked).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pluggy
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from cortex.config import GatewayConfig, ModelProfile
from cortex.dialect import Call, CatalogueEntry, Dialect, LoadProgress
from cortex.errors import (
    ConfigError,
    CortexError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
)
from cortex.gateway.activity import ACTIVITY_PLUGIN, Activity, activity_routes
from cortex.gateway.admin import admin_routes
from cortex.gateway.auth import AuthGuard, allowed_models
from cortex.gateway.catalogue import build_catalogue
from cortex.gateway.dialects import Dialects
from cortex.gateway.events import EVENTS_PLUGIN, EventStream
from cortex.gateway.fairshare import FairShare
from cortex.gateway.fleet import Fleet
from cortex.gateway.lifecycle import Lifecycle
from cortex.gateway.limits import BodyLimits, HeadLimit
from cortex.gateway.loader import Loader
from cortex.gateway.metrics import METRICS_PLUGIN, GatewayMetrics
from cortex.gateway.openapi import openapi_document
from cortex.gateway.origins import OriginGuard
from cortex.gateway.placement import Placer
from cortex.gateway.prefixes import PrefixTable
from cortex.gateway.proxy import Proxy
from cortex.gateway.quarantine import Quarantine
from cortex.gateway.reconciler import Reconciler
from cortex.gateway.requestlog import RequestLog
from cortex.gateway.state import LiveConfig, Reloader
from cortex.gateway.traffic import TRAFFIC_PLUGIN, Traffic
from cortex.gateway.ui import ui_routes
from cortex.plugins import Plugins
from cortex.records import log_value
from cortex.stops import check_stops

__all__ = ["Reloader", "create_app"]

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


class _DialectAPI:
    """cortex.dialect.GatewayAPI for the dialects' routes: forward a call, load, unload
    and keep a model (each after the key's model allow-list), the catalogue, and the
    caps on stop lists."""

    def __init__(self, live: LiveConfig, placer: Placer, proxy: Proxy,
                 lifecycle: Lifecycle) -> None:
        self._live = live
        self._placer = placer
        self._proxy = proxy
        self._lifecycle = lifecycle

    def _allow(self, model: str, request: Request) -> None:
        allowed = allowed_models(request.scope)
        if allowed is not None and model not in allowed \
                and self._placer.resolve(model)[0].id not in allowed:
            raise PermissionDenied(f"this API key may not use model `{model}`")

    async def forward(self, call: Call, request: Request, dialect: Dialect) -> Response:
        self._allow(call.model, request)
        return await self._proxy.forward(call, request, dialect)

    def load(self, model: str, request: Request) -> AsyncIterator[LoadProgress]:
        self._allow(model, request)
        return self._lifecycle.load(model)

    async def unload(self, model: str, request: Request) -> list[str]:
        self._allow(model, request)
        return await self._lifecycle.unload(model)

    def set_ttl(self, model: str, ttl: float | None, request: Request) -> None:
        self._allow(model, request)
        self._lifecycle.set_ttl(model, ttl)

    def catalogue(self, request: Request | None = None) -> list[CatalogueEntry]:
        entries = build_catalogue(self._live.profiles, self._placer.snapshot(),
                                  self._placer.unservable())
        allowed = allowed_models(request.scope) if request is not None else None
        if allowed is None:
            return entries
        ids = set()  # the key's list may name aliases: what profiles they mean
        for name in allowed:
            with contextlib.suppress(CortexError):
                ids.add(self._placer.resolve(name)[0].id)
        return [e for e in entries if e.id in ids or e.id in allowed]

    def catalogue_entry(self, model: str, request: Request | None = None) -> CatalogueEntry:
        entries = self.catalogue(request)
        for entry in entries:
            if model == entry.id or model in entry.aliases:
                return entry
        raise ModelNotFound(model)

    def check_stops(self, stops: str | Sequence[str] | msgspec.Raw | None,
                    field: str) -> None:
        settings = self._live.settings
        check_stops(stops, field=field, max_strings=settings.max_stop_strings,
                    max_bytes=settings.max_stop_bytes)


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


def _error_handlers(dialects: Dialects) -> dict[Any, ExceptionHandler]:
    """Errors answered in the envelope of the path's dialect."""

    async def on_cortex_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CortexError)
        return dialects.error_response(request.url.path, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = NotFound(f"no route {request.method} {request.url.path}") \
            if exc.status_code == 404 else InvalidRequest(f"{request.method} "
                                                          f"{request.url.path}: {exc.detail}")
        response = dialects.error_response(request.url.path, error)
        response.status_code = exc.status_code
        return response

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", log_value(request.url.path))
        return dialects.error_response(request.url.path,
                                       CortexError(f"internal error: {type(exc).__name__}"))

    return {CortexError: on_cortex_error, HTTPException: on_http_error,
            Exception: on_unexpected}


def create_app(config: GatewayConfig, plugin_manager: pluggy.PluginManager, *,
               profiles: Sequence[ModelProfile] | None = None,
               reloader: Reloader | None = None) -> Starlette:
    """Build the gateway app. `profiles` defaults to the ones inline in `config`;
    `reloader` re-reads configuration for SIGHUP and POST /admin/reload."""
    plugins = Plugins(plugin_manager)
    plugins.validate()
    live = LiveConfig(config, _profiles_of(config, profiles), plugins, reloader=reloader)
    fleet = Fleet(config.gateway, plugins.hook)
    loader = Loader(fleet, load_timeout=config.gateway.load_timeout)

    dialects = Dialects(cls(live.dialect_options[name])
                        for name, cls in plugins.dialects.items())

    def follow(fresh: GatewayConfig) -> None:  # a reload reaches the parts before it returns
        fleet.settings = fresh.gateway
        loader.load_timeout = fresh.gateway.load_timeout
        fleet.configure(fresh.neurons)
        for dialect in dialects:  # requests that start from now on read them
            dialect.options = live.dialect_options[dialect.name]

    live.on_reload(follow)
    fleet.on_pin(live.adopt_pin)  # the neurons' pin flags are the fleet's one truth
    # Fair turns between clients on a busy model (held here, not in a neuron's FIFO).
    fair = FairShare(fleet.ready_slots)
    traffic = Traffic()  # recent rates for /admin/fleet and the `cost` eviction policy
    placer = Placer(live, fleet, loader, fair, rates=traffic.rates)
    prefixes = PrefixTable()
    quarantine = Quarantine(lambda: live.settings)
    proxy = Proxy(placer, fleet, live=live, fair=fair, prefixes=prefixes,
                  quarantine=quarantine, hook=plugins.hook, traffic=traffic)
    reconciler = Reconciler(placer, fleet, loader, live)
    # The metrics observer holds this app's own MeterProvider, so it is an object
    # registered per app rather than as a default entry-point plugin.
    metrics: GatewayMetrics | None = None
    if not plugin_manager.is_blocked(METRICS_PLUGIN):
        metrics = GatewayMetrics(fleet.describe, lambda model: (
            live.profiles.get(model) is not None
            or bool(placer.snapshot().placements_of(model))))
        plugin_manager.register(metrics, name=METRICS_PLUGIN)
    plugin_manager.register(traffic, name=TRAFFIC_PLUGIN)
    activity = Activity()  # the last requests, for the dashboard's activity log
    plugin_manager.register(activity, name=ACTIVITY_PLUGIN)
    events = EventStream()  # GET /admin/events
    plugin_manager.register(events, name=EVENTS_PLUGIN)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        live.keys.announce(live.settings.listen)
        fleet.configure(live.config.neurons)
        reconciler.start()
        try:
            yield
        finally:
            placer.close()
            await reconciler.close()
            await loader.close()
            await fleet.close()
            plugin_manager.unregister(traffic)
            plugin_manager.unregister(activity)
            events.close()
            plugin_manager.unregister(events)
            if metrics is not None:
                plugin_manager.unregister(metrics)
                metrics.close()

    async def health(request: Request) -> Response:
        up = sum(1 for n in placer.snapshot().nodes if n.up)
        return JSONResponse({"status": "ok", "nodes_up": up, "nodes": len(fleet.names)})

    document = openapi_document(list(dialects))

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    api = _DialectAPI(live, placer, proxy, Lifecycle(placer, fleet, loader, live))
    routes: list[BaseRoute] = [Route("/health", health), Route("/openapi.json", openapi)]
    for dialect in dialects:
        routes.extend(dialect.routes(api))
    routes.extend(admin_routes(placer, fleet, loader, live, traffic=traffic, turns=fair))
    routes.extend(activity_routes(activity))
    routes.append(events.route(lambda: live.settings.keepalive_interval))
    routes.extend(ui_routes())
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers=_error_handlers(dialects))
    app.state.live, app.state.placer, app.state.fleet = live, placer, fleet
    app.state.loader, app.state.fair, app.state.prefixes = loader, fair, prefixes
    app.state.quarantine, app.state.traffic, app.state.dialects = quarantine, traffic, dialects
    app.state.activity = activity
    app.state.events = events
    # Served on [gateway] metrics_listen by cortex.gateway.server (None when blocked).
    app.state.metrics = metrics
    refuse = dialects.refusal
    app.add_middleware(BodyLimits, settings=lambda: live.settings, respond=refuse)
    app.add_middleware(AuthGuard, keyring=lambda: live.keys, respond=refuse)
    app.add_middleware(OriginGuard, settings=lambda: live.settings,
                       keyed=lambda: not live.keys.open, respond=refuse)
    app.add_middleware(RequestLog)  # refusals that never reach a model: their own line
    app.add_middleware(_RequestIds)
    app.add_middleware(HeadLimit, settings=lambda: live.settings, respond=refuse)
    return app
