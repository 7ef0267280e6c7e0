"""The gateway against two real neurons: `a` with room to spare, `b` with a budget that
holds two copies of the bundled Gemma (n_ctx 2048) but not three, so placement on `b`
must evict. Each test runs its own in-process gateway and starts from empty neurons."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import NeuronProcess
from ..gateway_support import (
    RunningGateway,
    complete,
    neuron_models,
    profile,
    reset,
    roomy_and_tight,
    running_gateway,
    sse_data,
    sse_lines,
    wait_until,
)

pytestmark = [pytest.mark.model, pytest.mark.anyio]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
          cache_dir: Path) -> Iterator[dict[str, NeuronProcess]]:
    with roomy_and_tight(tmp_path_factory.mktemp("gateway-serving"), cache_dir, 2.5) as started:
        yield started


@pytest.fixture(autouse=True)
def empty(fleet: dict[str, NeuronProcess]) -> None:
    reset(*fleet.values())


def nodes(fleet: dict[str, NeuronProcess]) -> list[tuple[str, NeuronProcess]]:
    return list(fleet.items())


ON_B = ["b"]


# --- catalogue ---------------------------------------------------------------------------

async def test_catalogue_lists_what_live_nodes_may_serve(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile("google/gemma-3-270m", aliases=["gemma"], neurons=["a"]),
                profile("small", neurons=ON_B, priority=3, ttl=60),
                profile("ghost", neurons=["elsewhere"])]
    async with running_gateway(nodes(fleet), profiles) as gw:
        listed = (await gw.client.get("/v1/models")).json()
        assert listed["object"] == "list"
        by_id = {m["id"]: m for m in listed["data"]}
        assert set(by_id) == {"google/gemma-3-270m", "small"}
        small = by_id["small"]
        assert small["object"] == "model" and isinstance(small["created"], int)
        assert small["state"] == "available" and small["loaded_on"] == []
        assert (small["n_ctx"], small["priority"], small["pinned"]) == (2048, 3, False)

        assert (await complete(gw.client, "gemma")).status_code == 200
        for path in ("/v1/models/google/gemma-3-270m", "/v1/models/google%2Fgemma-3-270m",
                     "/v1/models/gemma"):
            one = (await gw.client.get(path)).json()
            assert one["id"] == "google/gemma-3-270m", path
            assert one["state"] == "ready" and one["loaded_on"] == ["a"]
        missing = await gw.client.get("/v1/models/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"

        # A model a neuron holds without a profile here is listed, and served where it is.
        async with httpx.AsyncClient(base_url=fleet["b"].url, timeout=60) as neuron:
            stray = {"id": "stray", "source": "bundled:gemma3-270m", "chat_format": "gemma",
                     "n_ctx": 1024}
            assert (await neuron.post("/models/load", json={"profile": stray})).status_code == 200

        async def stray_listed() -> bool:
            data = (await gw.client.get("/v1/models")).json()["data"]
            return any(m["id"] == "stray" and m["loaded_on"] == ["b"] for m in data)

        await wait_until(stray_listed, timeout=5, what="the stray model is listed")
        assert (await complete(gw.client, "stray")).status_code == 200


async def test_unknown_model_and_bad_bodies_get_openai_errors(
        fleet: dict[str, NeuronProcess]) -> None:
    async with running_gateway(nodes(fleet), [profile("m", neurons=["a"])]) as gw:
        unknown = await complete(gw.client, "nope")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        malformed = await gw.client.post("/v1/chat/completions", content=b"{not json")
        assert malformed.status_code == 400
        assert malformed.json()["error"]["type"] == "invalid_request_error"
        no_route = await gw.client.post("/v1/nothing", json={})
        assert no_route.status_code == 404 and "error" in no_route.json()
        # The neuron's own validation error comes back as it sent it.
        bad = await gw.client.post("/v1/completions", json={
            "model": "m", "prompt": "x", "max_tokens": "many"})
        assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]
        assert bad.headers["x-request-id"]


# --- on-demand loading ---------------------------------------------------------------------

async def test_ten_concurrent_requests_for_a_cold_model_cause_one_load(
        fleet: dict[str, NeuronProcess]) -> None:
    async with running_gateway(nodes(fleet), [profile("cold", neurons=["a"])]) as gw:
        async def streamed() -> list[str]:
            async with gw.client.stream("POST", "/v1/chat/completions", json={
                    "model": "cold", "stream": True, "max_tokens": 3,
                    "messages": [{"role": "user", "content": "Hi"}]}) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                await reply.aread()
                return sse_lines(reply.text)

        stream = asyncio.ensure_future(streamed())
        replies = await asyncio.wait_for(asyncio.gather(
            *(complete(gw.client, "cold") for _ in range(9))), 60)
        lines = await asyncio.wait_for(stream, 60)
        assert all(r.status_code == 200 for r in replies)
        assert len(gw.recorder.kinds("loaded", "cold")) == 1
        # The stream waited for the load with its progress as comments, then got chunks.
        assert lines[0].startswith(": loading cold on a "), lines
        data = sse_data(lines)
        assert data[-1] == "[DONE]" and data[0]["object"] == "chat.completion.chunk"
        assert (await neuron_models(fleet["a"]))["cold"]["state"] == "ready"
        assert [r.node for r in gw.recorder.records] == ["a"] * 10


async def test_load_deadline_answers_504_then_the_abandoned_load_is_undone(
        fleet: dict[str, NeuronProcess]) -> None:
    # Weights no other test loads (kept weights are by file and n_gpu_layers; this CPU
    # build offloads nothing either way), so the load reads the file and outlasts 0.3 s.
    async with running_gateway(nodes(fleet), [profile("slow", neurons=["a"], n_gpu_layers=7)],
                               load_timeout=0.3) as gw:
        # Explaining first caches the memory estimate, so the request starts its load at once.
        assert (await gw.client.get("/admin/route?model=slow")).json()["action"] == "load"
        reply = await complete(gw.client, "slow")
        assert reply.status_code == 504
        assert reply.json()["error"]["type"] == "timeout_error"

        async def undone() -> bool:
            return bool(gw.recorder.kinds("unloaded", "slow")) and \
                "slow" not in await neuron_models(fleet["a"])

        await wait_until(undone, timeout=20, what="the abandoned load is unloaded")
        assert gw.recorder.kinds("unloaded", "slow")[0].reason == "abandoned"


async def test_queue_limit_answers_429_with_retry_after(
        fleet: dict[str, NeuronProcess]) -> None:
    async with running_gateway(nodes(fleet), [profile("busy", neurons=["a"])],
                               queue_limit=2) as gw:
        replies = await asyncio.gather(*(complete(gw.client, "busy") for _ in range(6)))
        codes = sorted(r.status_code for r in replies)
        assert codes.count(200) >= 2 and 429 in codes, codes
        limited = next(r for r in replies if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "rate_limit_error"


async def test_client_disconnect_cancels_the_upstream_generation(
        fleet: dict[str, NeuronProcess]) -> None:
    async with running_gateway(nodes(fleet), [profile("long", neurons=["a"])]) as gw:
        assert (await complete(gw.client, "long")).status_code == 200
        async with gw.client.stream("POST", "/v1/completions", json={
                "model": "long", "prompt": "Once upon a time", "max_tokens": 400,
                "stream": True}) as reply:
            chunks = 0
            async for line in reply.aiter_lines():
                chunks += line.startswith("data: ")
                if chunks >= 3:
                    break

        async def idle() -> bool:
            model = (await neuron_models(fleet["a"]))["long"]
            return bool(model["in_flight"] == 0 and model["queued"] == 0)

        await wait_until(idle, timeout=5, what="the neuron stops generating")


# --- placement and eviction ------------------------------------------------------------------

async def resident(neuron: NeuronProcess) -> set[str]:
    return set(await neuron_models(neuron))


async def test_lru_evicts_the_least_recently_used(fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile(f"g{i}", neurons=ON_B) for i in (1, 2, 3)]
    async with running_gateway(nodes(fleet), profiles, eviction="lru") as gw:
        for model in ("g1", "g2", "g1", "g3"):
            assert (await complete(gw.client, model)).status_code == 200, model
        assert [e.model for e in gw.recorder.kinds("evicted")] == ["g2"]
        assert await resident(fleet["b"]) == {"g1", "g3"}


async def test_priority_evicts_the_lowest_priority_first(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile("g1", neurons=ON_B, priority=10), profile("g2", neurons=ON_B, priority=1),
                profile("g3", neurons=ON_B, priority=5)]
    async with running_gateway(nodes(fleet), profiles, eviction="priority") as gw:
        # g2 is the most recently used, but the lowest priority: it goes first.
        for model in ("g1", "g2", "g3"):
            assert (await complete(gw.client, model)).status_code == 200, model
        assert [e.model for e in gw.recorder.kinds("evicted")] == ["g2"]
        assert await resident(fleet["b"]) == {"g1", "g3"}


async def test_pinned_loads_at_start_and_is_never_evicted(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile("keep", neurons=ON_B, pinned=True), profile("g2", neurons=ON_B),
                profile("g3", neurons=ON_B)]
    async with running_gateway(nodes(fleet), profiles) as gw:
        async def pinned_ready() -> bool:
            return (await neuron_models(fleet["b"])).get("keep", {}).get("state") == "ready"

        await wait_until(pinned_ready, timeout=20, what="the pinned model loads at start-up")
        # `keep` is the least recently used, yet g2 is the one evicted for g3, and back.
        for model in ("g2", "g3", "g2"):
            assert (await complete(gw.client, model)).status_code == 200, model
        assert [e.model for e in gw.recorder.kinds("evicted")] == ["g2", "g3"]
        assert "keep" in await resident(fleet["b"])
        refused = await gw.client.post("/admin/models/keep/unload")
        assert refused.status_code == 409
        explained = (await gw.client.get("/admin/route", params={"model": "g3"})).json()
        assert explained["victims"] == ["g2"]


async def test_ttl_unloads_an_idle_model(fleet: dict[str, NeuronProcess]) -> None:
    async with running_gateway(nodes(fleet), [profile("brief", neurons=["a"], ttl=1.0)]) as gw:
        assert (await complete(gw.client, "brief")).status_code == 200

        async def gone() -> bool:
            return "brief" not in await resident(fleet["a"])

        await wait_until(gone, timeout=10, what="the TTL unloads the model")
        assert gw.recorder.kinds("unloaded", "brief")[0].reason == "ttl"


async def test_defrag_reloads_the_hot_set_after_n_cycles(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile(f"g{i}", neurons=ON_B) for i in (1, 2, 3)]
    async with running_gateway(nodes(fleet), profiles, defrag_after_cycles=1) as gw:
        for model in ("g1", "g2", "g3"):
            assert (await complete(gw.client, model)).status_code == 200, model

        async def defragged() -> bool:
            # Idle models were unloaded and loaded again (a busy one would have stayed).
            unloaded = {e.model for e in gw.recorder.kinds("unloaded")}
            reloaded = [e for e in gw.recorder.kinds("loaded") if e.model in unloaded]
            models = await neuron_models(fleet["b"])
            return bool(unloaded) and len(reloaded) == 2 * len(unloaded) \
                and all(m["state"] == "ready" for m in models.values()) \
                and not gw.loader.jobs

        await wait_until(defragged, timeout=30, what="node b is defragmented")
        assert {e.reason for e in gw.recorder.kinds("unloaded")} == {"defrag"}
        assert await resident(fleet["b"]) == {"g2", "g3"}
        assert gw.placer.snapshot().node("b").cycles == 0  # type: ignore[union-attr]


# --- explain, admin and CLI -------------------------------------------------------------------

async def cli(gw: RunningGateway, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", *args, "--url", gw.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode()
    return out.decode()


async def test_explain_shows_node_victims_and_wait_without_acting(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile(f"g{i}", neurons=ON_B) for i in (1, 2, 3)]
    async with running_gateway(nodes(fleet), profiles) as gw:
        for model in ("g1", "g2"):
            assert (await complete(gw.client, model)).status_code == 200
        data = (await gw.client.get("/admin/route", params={"model": "g3"})).json()
        assert data["action"] == "load" and data["node"] == "b"
        assert data["victims"] == ["g1"] and data["expected_wait"] > 0
        assert {"node": "a", "verdict": "not in the profile's neurons"} in data["candidates"]
        served = (await gw.client.get("/admin/route", params={"model": "g2"})).json()
        assert served["action"] == "serve" and served["node"] == "b"

        text = await cli(gw, "route", "--explain", "g3")
        assert "g3: load on b" in text and "evict: g1" in text and "expected wait" in text
        assert await resident(fleet["b"]) == {"g1", "g2"}  # nothing was done
        assert not gw.recorder.kinds("evicted")


async def test_admin_api_and_cli_load_unload_pin_and_status(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile("x", aliases=["ex"]), profile("y", neurons=ON_B)]
    async with running_gateway(nodes(fleet), profiles) as gw:
        assert "x is ready on b" in await cli(gw, "load", "ex", "--node", "b")
        assert await resident(fleet["b"]) == {"x"}
        status = await cli(gw, "status")
        assert "NODE" in status and "x" in status and "ready" in status
        assert "LOADED ON" in await cli(gw, "models")
        assert "unloaded from b" in await cli(gw, "unload", "x")
        assert await resident(fleet["b"]) == set()

        pinned = (await gw.client.post("/admin/models/y/pin")).json()
        assert pinned == {"model": "y", "pinned": True, "node": "b"}
        assert (await gw.client.post("/admin/models/y/unload")).status_code == 409
        assert (await gw.client.post("/admin/models/y/unpin")).json()["pinned"] is False
        reply = await gw.client.post("/admin/models/y/unload", json={"node": "b"})
        assert reply.json()["unloaded_from"] == ["b"]
        fleet_view = (await gw.client.get("/admin/fleet")).json()
        assert {n["name"] for n in fleet_view["nodes"]} == {"a", "b"}
        assert fleet_view["routing"] == "affinity" and fleet_view["eviction"] == "lru"
        assert (await gw.client.post("/admin/models/y/load", json={"node": "zz"})
                ).status_code == 404
