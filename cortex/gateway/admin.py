"""Admin API: fleet state, routing explanations, manual lifecycle and config reload.

    GET  /admin/fleet                           nodes, models, loads, in-flight, traffic, turns,
                                                unservable models
    GET  /admin/events                          SSE: loads (with progress), evictions, pins,
                                                nodes (cortex.gateway.events)
    GET  /admin/route?model=ID[&node=NAME]      the routing decision, not acted upon
    POST /admin/models/{id}/load|unload|pin|unpin   optional {"node": ..., "force": ...}
    POST /admin/nodes/{name}/drain|undrain      new work goes elsewhere; in flight finishes
    POST /admin/reload                          re-read cortex.toml and models.toml
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cortex.dialect import decode_body
from cortex.errors import ConfigError, Conflict, InvalidRequest, NotFound
from cortex.gateway.configcheck import problems_of

if TYPE_CHECKING:
    from cortex.gateway.fairshare import FairShare
    from cortex.gateway.fleet import Fleet
    from cortex.gateway.loader import Loader
    from cortex.gateway.placement import Placer
    from cortex.gateway.state import LiveConfig
    from cortex.gateway.traffic import Traffic
    from cortex.snapshot import FleetSnapshot

__all__ = ["AdminAction", "admin_routes"]

log = logging.getLogger("cortex.gateway.admin")


class AdminAction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /admin/models/{id}/{action}; `node` may also come as ?node=."""

    node: str | None = None
    force: bool = False


async def _action(request: Request) -> AdminAction:
    body = await request.body()
    action = decode_body(body, AdminAction) if body.strip() else AdminAction()
    node = request.query_params.get("node")
    if node:
        action.node = node
    if "force" in request.query_params:
        action.force = request.query_params["force"].lower() in ("1", "true", "yes")
    return action


def _with_idle(nodes: list[dict[str, Any]], snapshot: FleetSnapshot) -> list[dict[str, Any]]:
    """Add to each loaded model what the router sees: `idle_seconds` (0 while busy),
    `ttl`, and `expires_in`, the seconds until its TTL unloads it if it stays idle (None
    without a TTL, or pinned), for `cortex status`'s IDLE and UNTIL."""
    views = {(n.name, m.id): m for n in snapshot.nodes for m in n.models}
    for node in nodes:
        for model in node["models"]:
            view = views.get((node["name"], model["id"]))
            if view is None:
                continue
            model["idle_seconds"] = round(view.idle_for, 1)
            model["ttl"] = view.ttl
            model["expires_in"] = (None if view.ttl is None or view.pinned
                                   else round(max(0.0, view.ttl - view.idle_for), 1))
    return nodes


def admin_routes(placer: Placer, fleet: Fleet, loader: Loader, live: LiveConfig, *,
                 traffic: Traffic, turns: FairShare) -> list[BaseRoute]:
    """The /admin routes over the parts they show and act on: `traffic` for the last
    minute's rates, `turns` for the requests waiting for their turn on a busy model."""

    def known_node(name: str | None) -> str | None:
        if name is not None and not fleet.has(name):
            raise NotFound(f"no neuron named `{name}` in the fleet")
        return name

    async def fleet_view(request: Request) -> Response:
        now = time.monotonic()
        return JSONResponse({
            "nodes": _with_idle(fleet.describe(), placer.snapshot()),
            "loads": [{"model": j.model, "node": j.node, "waiters": j.waiters,
                       "seconds": round(now - j.started, 3), "keep": j.keep,
                       "progress": round(j.progress, 3)}
                      for j in loader.jobs],
            "routing": live.router.strategy.name,
            "eviction": live.router.evictor.policy.name,
            "traffic": traffic.describe(),
            # Per busy model: requests let through, and those waiting for their turn.
            "turns": turns.describe(),
            # Models no node can ever hold, each with why (state `unservable`).
            "unservable": placer.unservable(),
        })

    async def route(request: Request) -> Response:
        name = request.query_params.get("model")
        if not name:
            raise InvalidRequest("give the model to explain: /admin/route?model=ID",
                                 param="model")
        profile, loadable = placer.resolve(name)
        only = known_node(request.query_params.get("node"))
        decision = await placer.decide(profile, loadable=loadable, only=only)
        body = {"requested": name, **msgspec.to_builtins(decision)}
        if decision.action == "serve" and profile.spill_after is not None \
                and decision.ahead >= profile.spill_after and only is None:
            # The request would also start another copy (spill_after), here if anywhere.
            spill = await placer.spill_decision(profile)
            body["spill"] = msgspec.to_builtins(spill) if spill is not None else None
        return JSONResponse(body)

    async def model_action(request: Request) -> Response:
        name = request.path_params["model"]
        verb = request.path_params["action"]
        action = await _action(request)
        node = known_node(action.node)
        profile, loadable = placer.resolve(name)
        deadline = time.monotonic() + live.settings.load_timeout
        if verb == "load":
            if not loadable:
                raise Conflict(f"model `{profile.id}` has no profile here, so it cannot be "
                               "loaded through the gateway")
            placed = await placer.place(profile, deadline=deadline, keep=True, only=node)
            return JSONResponse({"model": profile.id, "node": placed, "state": "ready"})
        if verb == "unload":
            copies = [(n.name, m) for n, m in placer.snapshot().placements_of(profile.id)
                      if node is None or n.name == node]
            # Pinned here, or on a neuron by any replica: the neuron's flag counts too.
            pinned_on = [name for name, m in copies if m.pinned]
            if profile.pinned or pinned_on:
                where = f" on {', '.join(pinned_on)}" if pinned_on else ""
                raise Conflict(f"model `{profile.id}` is pinned{where}: unpin it first")
            nodes = [name for name, _ in copies]
            if not nodes:
                raise NotFound(f"model `{profile.id}` is not loaded"
                               + (f" on `{node}`" if node else ""))
            for each in nodes:
                await fleet.unload(each, profile.id, reason="manual", force=action.force)
            return JSONResponse({"model": profile.id, "unloaded_from": nodes})
        if verb in ("pin", "unpin"):
            if not loadable:
                raise Conflict(f"model `{profile.id}` has no profile here to pin")
            profile = live.set_pin(profile.id, verb == "pin")
            body: dict[str, Any] = {"model": profile.id, "pinned": profile.pinned}
            if verb == "pin":
                body["node"] = await placer.place(profile, deadline=deadline, keep=True,
                                                  only=node)
                # On the neuron too, so other gateway replicas do not evict it either.
                await fleet.pin(body["node"], profile.id, True)
            else:
                for holder, _ in placer.snapshot().placements_of(profile.id):
                    await fleet.pin(holder.name, profile.id, False)
            return JSONResponse(body)
        raise NotFound(f"no admin action `{verb}` (load, unload, pin, unpin)")

    async def node_action(request: Request) -> Response:
        name, verb = request.path_params["name"], request.path_params["action"]
        if verb not in ("drain", "undrain"):
            raise NotFound(f"no node action `{verb}` (drain, undrain)")
        known_node(name)
        status = await fleet.drain(name, verb == "drain")
        # The neuron's own count: requests from every gateway replica, not just this one.
        busy = sum(m.in_flight + m.queued for m in status.models)
        return JSONResponse({"node": name, "draining": status.draining, "busy": busy})

    async def reload(request: Request) -> Response:
        try:
            summary = await live.reload()
        except ConfigError as exc:
            for problem in problems_of(exc):
                log.error("POST /admin/reload: configuration not reloaded: %s", problem)
            raise InvalidRequest(f"configuration not reloaded: {exc.message}") from None
        return JSONResponse({"status": "reloaded", "summary": summary})

    return [
        Route("/admin/fleet", fleet_view),
        Route("/admin/route", route),
        Route("/admin/models/{model:path}/{action}", model_action, methods=["POST"]),
        Route("/admin/nodes/{name}/{action}", node_action, methods=["POST"]),
        Route("/admin/reload", reload, methods=["POST"]),
    ]
