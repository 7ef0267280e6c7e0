"""Embedding cortex in your own Python service.

1. Mount the gateway (`cortex.gateway.create_app`) inside another Starlette app under a
   path prefix, so one process serves your routes and the fleet's OpenAI API:

       .venv/bin/python examples/embed_router.py serve cortex.toml [--listen 127.0.0.1:8080]
       curl 127.0.0.1:8080/llm/v1/models

2. Drive the router yourself: a routing decision is a pure function of a FleetSnapshot,
   so you can ask "where would this go, and what would be evicted?" without a fleet:

       .venv/bin/python examples/embed_router.py decide
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from cortex import (
    Decision,
    Evictor,
    FleetSnapshot,
    ModelProfile,
    ModelView,
    NodeView,
    Plugins,
    Router,
    RouteRequest,
    build_plugin_manager,
    load_gateway_config,
)
from cortex.config import GatewayConfig
from cortex.gateway import create_app

GiB = 2**30


def build_app(config: GatewayConfig, profiles: Sequence[ModelProfile],
              prefix: str = "/llm") -> Starlette:
    """Your app, with the gateway's API under `prefix` (e.g. /llm/v1/chat/completions)."""
    gateway = create_app(config, build_plugin_manager(), profiles=profiles)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Starlette does not run a mounted app's lifespan, and the gateway's starts the
        # neuron polling and the reconciler (pins, TTL): run it inside ours.
        async with gateway.router.lifespan_context(gateway):
            yield

    async def home(request: Request) -> Response:
        fleet = request.app.state.placer.snapshot()
        return JSONResponse({"service": "my-app",
                             "llm_nodes_up": sum(1 for n in fleet.nodes if n.up)})

    app = Starlette(routes=[Route("/", home), Mount(prefix, app=gateway)], lifespan=lifespan)
    # The gateway's parts, for your own handlers: the Placer's snapshot is the fleet as
    # the router sees it (see cortex/gateway/app.py for the others on its app.state).
    app.state.placer = gateway.state.placer
    return app


def decide(snapshot: FleetSnapshot, model: str, estimates: dict[str, int], *,
           routing: str = "affinity", eviction: str = "lru") -> Decision:
    """The decision the gateway would take for one request, computed offline."""
    plugins = Plugins(build_plugin_manager())
    router = Router(plugins.routing_strategy(routing)(),
                    Evictor(plugins.eviction_policy(eviction)()))
    return router.decide(RouteRequest(model=model, estimates=estimates), snapshot)


def sample_fleet() -> FleetSnapshot:
    """Two 24 GiB GPUs: one busy with an 8B model, one holding two idle models."""
    return FleetSnapshot(nodes=(
        NodeView(name="gpu-a", budget=24 * GiB, models=(
            ModelView(id="llama-8b", bytes=9 * GiB, slots=4, active=3, last_used=300),)),
        NodeView(name="gpu-b", budget=24 * GiB, models=(
            ModelView(id="qwen-7b", bytes=8 * GiB, last_used=100),
            ModelView(id="embedder", bytes=1 * GiB, last_used=250, pinned=True))),
    ))


def _decide_command() -> None:
    fleet = sample_fleet()
    for model, estimates in (("llama-8b", {}),
                             ("mistral-24b", {"gpu-a": 20 * GiB, "gpu-b": 20 * GiB})):
        print(json.dumps(msgspec.to_builtins(decide(fleet, model, estimates))))


def _serve_command(config_path: str, listen: str) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config, profiles = load_gateway_config(config_path)
    hyper = Config()
    hyper.bind = [listen]
    asyncio.run(serve(build_app(config, profiles), hyper))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cortex embedded in another ASGI app")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("decide", help="print routing decisions over a sample fleet")
    serve = commands.add_parser("serve", help="serve this app with the gateway under /llm")
    serve.add_argument("config", help="cortex.toml")
    serve.add_argument("--listen", default="127.0.0.1:8080")
    args = parser.parse_args(argv)
    if args.command == "decide":
        _decide_command()
    else:
        _serve_command(args.config, args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
