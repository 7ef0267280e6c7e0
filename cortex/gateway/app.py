"""The gateway: create_app(config, plugin_manager) and the Gateway object behind it.

The Gateway owns this process's parts (fleet view, loader, router, proxy,
reconciler) and the decisions that glue them: which profile a name means, whether a
request may queue, where it goes. It keeps nothing a neuron cannot tell it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

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
    Conflict,
    CortexError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RateLimited,
    Timeout,
    Unavailable,
    Unreachable,
)
from cortex.evictor import Evictor
from cortex.gateway.auth import AuthGuard, KeyRing, allowed_models
from cortex.gateway.catalogue import build_catalogue, unconfigured_profile
from cortex.gateway.fairshare import FairShare
from cortex.gateway.fleet import Fleet
from cortex.gateway.limits import BodyLimits, HeadLimit
from cortex.gateway.loader import Loader, LoadJob
from cortex.gateway.metrics import METRICS_PLUGIN, GatewayMetrics
from cortex.gateway.openapi import openapi_document
from cortex.gateway.origins import OriginGuard
from cortex.gateway.prefixes import PrefixTable
from cortex.gateway.profiles import ProfileIndex
from cortex.gateway.proxy import Proxy
from cortex.gateway.quarantine import Quarantine
from cortex.gateway.reconciler import Reconciler
from cortex.gateway.traffic import TRAFFIC_PLUGIN, Traffic
from cortex.plugins import Plugins, build_options
from cortex.records import log_value
from cortex.router import Decision, Router, RouteRequest
from cortex.snapshot import FleetSnapshot
from cortex.stops import check_stops

__all__ = ["Gateway", "Reloader", "create_app"]

log = logging.getLogger("cortex.gateway")
#: A client's `x-request-id` that is kept (else a fresh one is made).
_PRINTABLE = re.compile(rb"[\x20-\x7e]{1,128}")

#: Re-reads configuration for SIGHUP and POST /admin/reload.
Reloader = Callable[[], tuple[GatewayConfig, list[ModelProfile]]]


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
        self._reloader = reloader
        self._pins: dict[str, bool] = {}
        self._waiting: Counter[str] = Counter()
        self._spills: dict[str, asyncio.Task[None]] = {}
        self.config = config
        self.keys = KeyRing(config.auth)  # a keys file that lost its keys refuses start
        self._base_profiles = list(profiles)
        self.profiles = ProfileIndex(self._base_profiles)
        self.router = self._router(config)
        self.fleet = Fleet(config.gateway, self.hook)
        self.loader = Loader(self.fleet, load_timeout=config.gateway.load_timeout)
        # Fair turns between clients on a busy model (held here, not in a neuron's FIFO).
        self.fair = FairShare(self.fleet.ready_slots)
        self.prefixes = PrefixTable()
        self.quarantine = Quarantine(lambda: self.settings)
        self.proxy = Proxy(self)
        self.reconciler = Reconciler(self)
        self.traffic = Traffic()  # recent rates for /admin/fleet; registered by create_app
        options = plugins.dialect_options(config.dialects)
        self.dialects = [cls(options[name]) for name, cls in plugins.dialects.items()]

    @property
    def settings(self) -> GatewaySection:
        return self.config.gateway

    def _router(self, config: GatewayConfig) -> Router:
        strategy_cls = self.plugins.routing_strategy(config.routing.strategy)
        policy_cls = self.plugins.eviction_policy(config.eviction.strategy)
        strategy = strategy_cls(build_options(strategy_cls, config.routing.options,
                                              where="cortex.toml: routing.options"))
        policy = policy_cls(build_options(policy_cls, config.eviction.options,
                                          where="cortex.toml: eviction.options"))
        return Router(strategy, Evictor(policy,
                                        defrag_after_cycles=config.eviction.defrag_after_cycles))

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.keys.announce(self.settings.listen)
        self.fleet.configure(self.config.neurons)
        self.reconciler.start()

    async def close(self) -> None:
        for task in list(self._spills.values()):
            task.cancel()
        await self.reconciler.close()
        await self.loader.close()
        await self.fleet.close()

    async def reload(self) -> str:
        """Re-read configuration and apply it; requests in flight carry on undisturbed."""
        if self._reloader is None:
            raise Conflict("this gateway runs an embedded configuration: nothing to reload")
        config, profiles = await asyncio.to_thread(self._reloader)
        # Keys first: a keys file emptied or unreadable refuses the reload, old keys kept.
        keys = await asyncio.to_thread(KeyRing, config.auth)
        router = self._router(config)
        dialect_options = self.plugins.dialect_options(config.dialects)
        if config.gateway.listen != self.config.gateway.listen:
            log.warning("gateway.listen changed: restart the gateway to move it")
        self.config = config
        self.keys = keys
        keys.announce(config.gateway.listen)
        self._base_profiles = list(profiles)
        self.profiles = ProfileIndex(self._base_profiles, self._pins)
        self.router = router
        for dialect in self.dialects:  # requests that start from now on read them
            dialect.options = dialect_options[dialect.name]
        self.fleet.settings = config.gateway
        self.loader.load_timeout = config.gateway.load_timeout
        self.fleet.configure(config.neurons)
        self.reconciler.wake()
        summary = f"{len(config.neurons)} neurons, {len(profiles)} models"
        log.info("configuration reloaded: %s", summary)
        return summary

    def set_pin(self, model: str, pinned: bool) -> ModelProfile:
        profile = self.profiles.resolve(model)
        self._pins[profile.id] = pinned
        self.profiles = ProfileIndex(self._base_profiles, self._pins)
        self.reconciler.wake()
        return self.profiles.resolve(profile.id)

    # --- views ----------------------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        return self.fleet.snapshot(self.profiles)

    def catalogue(self) -> list[CatalogueEntry]:
        return build_catalogue(self.profiles, self.snapshot())

    def catalogue_entry(self, model: str) -> CatalogueEntry:
        entries = self.catalogue()
        for entry in entries:
            if model == entry.id or model in entry.aliases:
                return entry
        raise ModelNotFound(model)

    def resolve(self, name: str) -> tuple[ModelProfile, bool]:
        """The profile `name` means, and whether the gateway may load it (it may not load a
        model a neuron holds that no profile describes)."""
        try:
            return self.profiles.resolve(name), True
        except ModelNotFound:
            profile = unconfigured_profile(name, self.snapshot())
            if profile is None:
                raise
            return profile, False

    # --- admission and placement ------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, model: str) -> Iterator[None]:
        self._waiting[model] += 1
        try:
            yield
        finally:
            self._waiting[model] -= 1

    def admit(self, profile: ModelProfile) -> None:
        """Refuse a request (429) when too many already wait for this model."""
        queued = self._waiting[profile.id] + self.fleet.backlog(profile.id) \
            + self.fair.waiting(profile.id)
        limit = self.settings.queue_limit
        if queued >= limit:
            job = self.loader.job(profile.id)
            wait = 1.0
            if job is not None:
                expected = self.fleet.load_seconds(profile.id) or 5.0
                wait = max(1.0, expected - (time.monotonic() - job.started))
            raise RateLimited(f"model `{profile.id}` has {queued} requests waiting "
                              f"(queue_limit is {limit})", retry_after=wait)

    def _route_request(self, profile: ModelProfile, *, prefix_node: str | None,
                       exclude: frozenset[str], only: str | None) -> RouteRequest:
        affinity = (only,) if only else tuple(profile.neurons)
        return RouteRequest(model=profile.id, affinity=affinity, prefix_node=prefix_node,
                            exclude=exclude, load_seconds=self.fleet.load_seconds(profile.id),
                            max_copies=profile.max_copies)

    async def decide(self, profile: ModelProfile, *, loadable: bool = True,
                     prefix_node: str | None = None, exclude: frozenset[str] = frozenset(),
                     only: str | None = None) -> Decision:
        """The router's decision; asks the neurons for memory estimates only when the model
        must be placed somewhere new."""
        request = self._route_request(profile, prefix_node=prefix_node, exclude=exclude,
                                      only=only)
        decision = self.router.decide(request, self.snapshot())
        if decision.action in ("serve", "join") or not loadable:
            return decision
        names = [n.name for n in self.snapshot().nodes if request.allows(n)]
        estimates = await self.fleet.estimates(profile, names)
        return self.router.decide(msgspec.structs.replace(request, estimates=estimates),
                                  self.snapshot())

    def _usable(self, job: LoadJob | None, exclude: frozenset[str],
                only: str | None) -> LoadJob | None:
        if job is None or job.node in exclude or (only is not None and job.node != only):
            return None
        return job

    async def place(self, profile: ModelProfile, *, loadable: bool = True,
                    prefix_node: str | None = None, exclude: frozenset[str] = frozenset(),
                    deadline: float, keep: bool = False, only: str | None = None) -> str:
        """A node where the model is ready, loading it first (one load per model) if needed."""
        refusals = 0
        failed: CortexError | None = None  # the last load that failed on a node now excluded
        while True:
            if time.monotonic() >= deadline:
                raise Timeout(f"model `{profile.id}` could not be placed before the deadline",
                              retry_after=5)
            request = self._route_request(profile, prefix_node=prefix_node, exclude=exclude,
                                          only=only)
            quick = self.router.decide(request, self.snapshot())
            if quick.action == "serve" and quick.node is not None:
                self._spill_soon(profile, quick)
                return quick.node
            job = self._usable(self.loader.job(profile.id), exclude, only)
            if job is None:
                decision = await self.decide(profile, loadable=loadable, prefix_node=prefix_node,
                                             exclude=exclude, only=only)
                job = self._usable(self.loader.job(profile.id), exclude, only)
                if job is None and decision.action == "none" and refusals:
                    # A neuron refused our load because another gateway took the room:
                    # its model becomes evictable once ready and idle, so wait for that
                    # (up to the deadline) rather than fail a request that fits the fleet.
                    await asyncio.sleep(min(self.settings.poll_interval,
                                            max(0.0, deadline - time.monotonic())))
                    continue
                if job is None and decision.action == "none" and failed is not None:
                    raise failed  # what went wrong, not "no node can serve it"
                if job is None:
                    job = self._act(profile, decision, loadable=loadable, keep=keep)
                    if job is None:
                        assert decision.node is not None
                        return decision.node
            if keep:
                job.keep = True
            try:
                await self.loader.wait(job, deadline - time.monotonic())
                return job.node
            except InsufficientMemory:
                # Another gateway (or a stale view) took the room: look again, a few times.
                refusals += 1
                if refusals > 2:
                    raise
                await self.fleet.refresh(job.node)
            except Conflict:
                await self.fleet.refresh(job.node)
                await asyncio.sleep(0.2)
            except (Unreachable, Unavailable) as exc:
                # Unavailable: the neuron would not load it (draining, or the load
                # failed there); another node may.
                failed = exc
                exclude = exclude | {job.node}
                self.fleet.poke(job.node)

    def _spill_soon(self, profile: ModelProfile, decision: Decision) -> None:
        self.spill_if_queued(profile, decision.ahead)

    def spill_if_queued(self, profile: ModelProfile, ahead: int) -> None:
        """When a request queues behind `spill_after` others (`ahead`: on a neuron, or
        waiting for its turn here), load another copy in the background; requests keep
        going to the ready copies meanwhile, never wait for it."""
        if profile.spill_after is None or ahead < profile.spill_after \
                or profile.id in self._spills or self.loader.job(profile.id) is not None:
            return
        task = asyncio.create_task(self._spill(profile), name=f"spill:{profile.id}")
        self._spills[profile.id] = task
        task.add_done_callback(lambda _: self._spills.pop(profile.id, None))

    async def spill_decision(self, profile: ModelProfile) -> Decision | None:
        """Where another copy of `profile` would load now (Router.spill), if anywhere."""
        request = self._route_request(profile, prefix_node=None, exclude=frozenset(),
                                      only=None)
        names = [n.name for n in self.snapshot().nodes if request.allows(n)]
        try:
            estimates = await self.fleet.estimates(profile, names)
        except CortexError as exc:
            log.info("%s: no estimates for another copy: %s", profile.id, exc.message)
            return None
        return self.router.spill(msgspec.structs.replace(request, estimates=estimates),
                                 self.snapshot())

    async def _spill(self, profile: ModelProfile) -> None:
        decision = await self.spill_decision(profile)
        if decision is None or decision.node is None or decision.needs is None \
                or self.loader.job(profile.id) is not None:
            return
        log.info("%s: %s; loading one on %s", profile.id, decision.reason, decision.node)
        self.loader.start(profile, decision.node, needs=decision.needs, keep=True)

    def _act(self, profile: ModelProfile, decision: Decision, *, loadable: bool,
             keep: bool) -> LoadJob | None:
        if decision.action == "serve":
            return None
        if decision.action == "none" or decision.node is None:
            detail = "; ".join(f"{v.node}: {v.verdict}" for v in decision.candidates)
            raise Unavailable(decision.reason + (f" ({detail})" if detail else ""),
                              retry_after=5)
        if not loadable:
            raise Unavailable(f"model `{profile.id}` is {decision.action}ing on "
                              f"`{decision.node}`; retry shortly", retry_after=2)
        keep = keep or profile.pinned  # a pinned model's load is never abandoned
        if decision.action == "join":
            return self.loader.join(profile, decision.node, keep=keep)
        assert decision.needs is not None
        return self.loader.start(profile, decision.node, needs=decision.needs,
                                 victims=decision.victims, keep=keep,
                                 policy=self.router.evictor.policy.name)

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

    document = openapi_document(gateway.dialects)

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
