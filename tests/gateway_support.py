"""Helpers for the gateway tests: an in-process gateway on a real port, SSE reading,
neuron resets and bounded waits. Neurons are real `neuron serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.routing import Mount

from cortex import FleetEvent, ModelProfile, build_plugin_manager, hookimpl
from cortex.config import GatewayConfig
from cortex.gateway import create_app
from cortex.gateway.fairshare import FairShare
from cortex.gateway.fleet import Fleet
from cortex.gateway.loader import Loader
from cortex.gateway.placement import Placer
from cortex.gateway.prefixes import PrefixTable
from cortex.gateway.quarantine import Quarantine
from cortex.gateway.state import LiveConfig
from cortex.metrics import metrics_app

from .conftest import NeuronProcess, free_port

GEMMA = "bundled:gemma3-270m"


def profile(model_id: str, **fields: Any) -> ModelProfile:
    """A profile of the bundled Gemma under another id (several ids may share one GGUF)."""
    fields.setdefault("n_ctx", 2048)
    return ModelProfile(id=model_id, source=GEMMA, chat_format="gemma", **fields)


class Recorder:
    """A plugin that keeps every fleet event and finished request."""

    def __init__(self) -> None:
        self.events: list[FleetEvent] = []
        self.records: list[Any] = []

    @hookimpl
    def fleet_event(self, event: FleetEvent) -> None:
        self.events.append(event)

    @hookimpl
    def request_finished(self, record: Any) -> None:
        self.records.append(record)

    def kinds(self, kind: str, model: str | None = None) -> list[FleetEvent]:
        return [e for e in self.events if e.kind == kind and (model is None or e.model == model)]


class RunningGateway:
    """A served gateway, its client, and the parts of it a test looks into (`app.state`)."""

    def __init__(self, url: str, state: Any, recorder: Recorder,
                 client: httpx.AsyncClient, metrics_url: str | None = None) -> None:
        self.url, self.recorder, self.client = url, recorder, client
        self.metrics_url = metrics_url
        self.live: LiveConfig = state.live
        self.placer: Placer = state.placer
        self.fleet: Fleet = state.fleet
        self.loader: Loader = state.loader
        self.fair: FairShare = state.fair
        self.prefixes: PrefixTable = state.prefixes
        self.quarantine: Quarantine = state.quarantine


@contextlib.asynccontextmanager
async def running_gateway(neurons: Iterable[tuple[str, NeuronProcess]],
                          profiles: Iterable[ModelProfile], *, eviction: str = "lru",
                          routing: str = "affinity", defrag_after_cycles: int = 0,
                          plugins: Iterable[object] = (), metrics: bool = False,
                          auth: dict[str, Any] | None = None,
                          dialects: dict[str, dict[str, Any]] | None = None,
                          reloader: Callable[[], tuple[GatewayConfig, list[ModelProfile]]]
                          | None = None, mount: str = "",
                          **settings: Any) -> AsyncIterator[RunningGateway]:
    """Serve a gateway with hypercorn on a free loopback port, in this event loop; with
    `metrics`, its Prometheus endpoint on another (`metrics_listen`), as `cortex serve`
    does. `plugins` are registered beside the Recorder; `auth` is the `[auth]` table,
    `dialects` the `[dialects.NAME]` tables; `reloader` answers /admin/reload; `mount`
    serves it under that path prefix (as a proxy would), which the url then ends with."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    port = free_port()
    settings.setdefault("poll_interval", 0.25)
    settings.setdefault("keepalive_interval", 0.2)
    settings.setdefault("load_timeout", 60.0)
    nodes = list(neurons)
    config = msgspec.convert({
        "gateway": {"listen": f"127.0.0.1:{port}", **settings},
        "eviction": {"strategy": eviction, "defrag_after_cycles": defrag_after_cycles},
        "routing": {"strategy": routing},
        "neurons": [{"name": name, "endpoint": n.url} for name, n in nodes],
        "auth": auth or {},
        "dialects": dialects or {},
    }, GatewayConfig)
    recorder = Recorder()
    app = create_app(config, build_plugin_manager(entry_points=False,
                                                  extra=[recorder, *plugins]),
                     profiles=list(profiles), reloader=reloader)
    served: Starlette = app
    if mount:
        @contextlib.asynccontextmanager
        async def lifespan(outer: Starlette) -> AsyncIterator[None]:
            async with app.router.lifespan_context(app):
                yield

        served = Starlette(routes=[Mount(mount, app=app)], lifespan=lifespan)
    hyper = Config()
    hyper.bind = [f"127.0.0.1:{port}"]
    hyper.accesslog = None
    hyper.graceful_timeout = 2
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(served, hyper, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    tasks = [task]
    metrics_url = None
    if metrics:
        metrics_port = free_port()
        metrics_hyper = Config()
        metrics_hyper.bind = [f"127.0.0.1:{metrics_port}"]
        metrics_hyper.accesslog = None
        tasks.append(asyncio.ensure_future(serve(
            metrics_app(app.state.metrics.prometheus), metrics_hyper,  # type: ignore[arg-type]
            shutdown_trigger=stop.wait)))
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    url = f"http://127.0.0.1:{port}{mount}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async def all_up() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    health = (await client.get("/health")).json()
                    return bool(health["nodes_up"] == len(nodes))
                return False

            await wait_until(all_up, timeout=30, what="gateway sees every neuron")
            yield RunningGateway(url, app.state, recorder, client, metrics_url)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float,
                     what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting until {what}")


async def neuron_models(neuron: NeuronProcess) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=neuron.url, timeout=30) as client:
        models = (await client.get("/models")).json()["models"]
    return {m["id"]: m for m in models}


def reset(*neurons: NeuronProcess) -> None:
    """Unload everything, so each test starts from an empty fleet."""
    with httpx.Client(timeout=60) as client:
        for neuron in neurons:
            deadline = time.monotonic() + 30
            while True:
                models = client.get(f"{neuron.url}/models").json()["models"]
                if not models:
                    break
                assert time.monotonic() < deadline, models
                for m in models:
                    if m["state"] == "ready":
                        if m.get("pinned"):  # a neuron refuses to unload a pinned copy
                            client.post(f"{neuron.url}/models/pin",
                                        json={"model": m["id"], "pinned": False})
                        client.post(f"{neuron.url}/models/unload",
                                    json={"model": m["id"], "force": True})
                time.sleep(0.1)


def estimate(neuron: NeuronProcess, model: ModelProfile) -> int:
    """What the neuron says `model` would reserve (placement budgets are built from it)."""
    reply = httpx.post(f"{neuron.url}/models/estimate",
                       json={"profile": msgspec.to_builtins(model)}, timeout=60)
    reply.raise_for_status()
    return int(reply.json()["total"])


async def complete(client: httpx.AsyncClient, model: str, *, max_tokens: int = 2,
                   prompt: str = "Hello") -> httpx.Response:
    return await client.post("/v1/completions", json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


def sse_lines(text: str) -> list[str]:
    """The non-empty lines of an SSE body (comments included)."""
    return [line for line in text.split("\n") if line]


def sse_data(lines: Iterable[str]) -> list[Any]:
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@contextlib.contextmanager
def neuron_fleet(tmp: Path, cache_dir: Path | None, names: Iterable[str],
                 **config: Any) -> Iterator[dict[str, NeuronProcess]]:
    """Real neurons on loopback, one per name, with `config` (and `cache_dir`, where the
    bundled model is assembled), stopped on the way out."""
    if cache_dir is not None:
        config["cache_dir"] = str(cache_dir)
    started = {name: NeuronProcess({"name": name, **config}, tmp) for name in names}
    try:
        for neuron in started.values():
            neuron.wait_ready()
        yield started
    finally:
        for neuron in started.values():
            neuron.stop()


@contextlib.contextmanager
def roomy_and_tight(tmp: Path, cache_dir: Path, copies: float
                    ) -> Iterator[dict[str, NeuronProcess]]:
    """Neuron `a` with room to spare, and `b` whose budget holds `copies` times the
    bundled Gemma's estimate (so eviction has work to do there)."""
    with neuron_fleet(tmp, cache_dir, ["a"]) as fleet:
        budget = int(estimate(fleet["a"], profile("probe")) * copies)
        b = NeuronProcess({"name": "b", "cache_dir": str(cache_dir), "memory_budget": budget},
                          tmp)
        try:
            b.wait_ready()
            yield {**fleet, "b": b}
        finally:
            b.stop()
