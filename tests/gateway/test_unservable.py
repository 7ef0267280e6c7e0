"""Honest states: a model no node can ever hold is `unservable`, a 4xx naming the reason
per node that the official SDKs do not retry; a fleet that is only busy stays 503 (OpenAI)
or 529 (Anthropic) with a Retry-After. Synthetic neurons with small budgets: what is
tested is placement, not inference."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import msgspec
import openai
import pytest

from cortex import FleetSnapshot, ModelProfile
from cortex.router import Decision

from ..conftest import ROOT, NeuronProcess
from ..gateway_support import RunningGateway, running_gateway, wait_until
from .fixture_fleet import FixtureFleet, GiB, fixture, live_config, placer_over
from .fixture_fleet import profile as fixture_profile

pytestmark = [pytest.mark.anyio]


def synthetic(model_id: str, size: str, **fields: object) -> ModelProfile:
    return ModelProfile(id=model_id, source=f"synthetic:rate=0,tokens=3,bytes={size}",
                        harness="synthetic", **fields)  # type: ignore[arg-type]


PROFILES = [
    synthetic("huge", "4GiB"),  # over both 3 GiB budgets
    ModelProfile(id="missing", source="no-such-model.gguf", n_ctx=512),  # no such file
    ModelProfile(id="unknown", source="bundled:no-such-model", n_ctx=512),
    # Room for one of them on node a only: the other waits for room (temporary).
    synthetic("big1", "2GiB", neurons=["a"]),
    synthetic("big2", "2GiB", neurons=["a"]),
]
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[tuple[str, NeuronProcess]]]:
    models = tmp_path / "models"
    models.mkdir()
    started = [(name, NeuronProcess({"name": name, "memory_budget": "3GiB",
                                     "model_dirs": [str(models)]}, tmp_path))
               for name in ("a", "b")]
    try:
        for _, neuron in started:
            neuron.wait_ready()
        yield started
    finally:
        for _, neuron in started:
            neuron.stop()


def requests_for(gw: RunningGateway, model: str) -> int:
    return sum(1 for r in gw.recorder.records if r.model == model)


async def test_unservable_is_a_4xx_the_sdks_do_not_retry(
        nodes: list[tuple[str, NeuronProcess]]) -> None:
    async with running_gateway(nodes, PROFILES) as gw:
        openai_sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=2)
        anthropic_sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=2)
        try:
            for model, why in [("huge", "needs 4.00 GiB, budget is only 3.00 GiB"),
                               ("missing", "no-such-model.gguf"),
                               ("unknown", "unknown bundled model `no-such-model`")]:
                with pytest.raises(openai.BadRequestError) as refused:
                    await openai_sdk.chat.completions.create(model=model, messages=CHAT)
                said = refused.value.message
                assert "no neuron can ever serve" in said and why in said, said
                assert "a: " in said and "b: " in said, said  # the reason per node
                assert refused.value.code == "model_unservable"
                with pytest.raises(anthropic.BadRequestError) as refused_too:
                    await anthropic_sdk.messages.create(model=model, max_tokens=3,
                                                        messages=CHAT)  # type: ignore[arg-type]
                assert why in refused_too.value.message
                # Once per dialect: the SDKs' retries (2 each) never came.
                assert requests_for(gw, model) == 2
        finally:
            await openai_sdk.close()
            await anthropic_sdk.close()


async def test_a_busy_fleet_stays_temporary_with_a_retry_after(
        nodes: list[tuple[str, NeuronProcess]]) -> None:
    async with running_gateway(nodes, PROFILES) as gw:
        pinned = await gw.client.post("/admin/models/big1/pin")
        assert pinned.status_code == 200, pinned.text
        openai_sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0)
        anthropic_sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0)
        try:
            with pytest.raises(openai.InternalServerError) as busy:
                await openai_sdk.chat.completions.create(model="big2", messages=CHAT)
            assert busy.value.status_code == 503
            assert int(busy.value.response.headers["retry-after"]) >= 1
            assert "pinned" in busy.value.message
            with pytest.raises(anthropic.InternalServerError) as overloaded:
                await anthropic_sdk.messages.create(model="big2", max_tokens=3,
                                                    messages=CHAT)  # type: ignore[arg-type]
            assert overloaded.value.status_code == 529
            assert int(overloaded.value.response.headers["retry-after"]) >= 1
        finally:
            await openai_sdk.close()
            await anthropic_sdk.close()
        route = (await gw.client.get("/admin/route", params={"model": "big2"})).json()
        assert route["action"] == "none" and route["unservable"] is False, route


async def _cli(url: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", *args, "--url", url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_catalogue_admin_and_route_explain_say_unservable(
        nodes: list[tuple[str, NeuronProcess]]) -> None:
    async with running_gateway(nodes, PROFILES) as gw:
        async def listed() -> dict[str, dict[str, object]]:
            return {m["id"]: m for m in (await gw.client.get("/v1/models")).json()["data"]}

        async def all_known() -> bool:  # the first listing asks the neurons
            states = {k: m["state"] for k, m in (await listed()).items()}
            return all(states[m] == "unservable" for m in ("huge", "missing", "unknown"))

        await wait_until(all_known, timeout=20, what="the catalogue knows the unservable")
        models = await listed()
        assert "budget is only 3.00 GiB" in str(models["huge"]["reason"])
        assert "no-such-model.gguf" in str(models["missing"]["reason"])
        assert models["big2"]["state"] == "available" and models["big2"]["reason"] is None
        fleet = (await gw.client.get("/admin/fleet")).json()
        assert set(fleet["unservable"]) == {"huge", "missing", "unknown"}

        code, out = await _cli(gw.url, "route", "--explain", "huge")
        assert code == 2, out
        assert "unservable" in out and "expected wait" not in out, out
        code, out = await _cli(gw.url, "route", "--explain", "big2")
        assert code == 0, out


# --- Retry-After, over a fixture fleet (no neurons) ---------------------------------------

async def test_retry_after_is_the_expected_load_once_per_slots_waiting() -> None:
    snapshot = fixture("fleet_mixed.json")
    fleet = FixtureFleet(snapshot, estimates={"gpu-a": 2 * GiB, "gpu-b": 3 * GiB})
    new = fixture_profile("new", slots=2)
    placer, _, _ = placer_over(fleet, live_config(snapshot, [new], load_timeout=600.0))
    alone = placer.retry_after(new)
    assert alone == 9.0  # never loaded: 4 s per GiB of the smallest estimate, plus 1 s
    with placer.waiting("new"), placer.waiting("new"), placer.waiting("new"):
        assert placer.retry_after(new) == 2 * alone  # 3 waiting on 2 slots: one round more
    loading = Decision(action="none", model="new", expected_wait=30.0)
    assert placer.retry_after(new, loading) == 30.0
    placer, _, _ = placer_over(fleet, live_config(snapshot, [new], load_timeout=5.0))
    assert placer.retry_after(new, loading) == 5.0  # never past the load deadline


async def test_a_model_on_its_way_out_is_waited_for_not_refused() -> None:
    """A request for a model being unloaded from the only node it may use (keep_alive 0,
    an unload, a TTL) waits for that to pass instead of answering 503: the Ollama SDK's
    request right after a `keep_alive=0` answer did get 503 while the neuron finished."""
    mixed = fixture("fleet_mixed.json")
    a = mixed.nodes[0]

    def with_qwen(state: str) -> FleetSnapshot:
        models = tuple(msgspec.structs.replace(m, state=state) if m.id == "qwen2.5-7b" else m
                       for m in a.models)
        return msgspec.structs.replace(
            mixed, nodes=(msgspec.structs.replace(a, models=models), *mixed.nodes[1:]))

    fleet = FixtureFleet(with_qwen("unloading"), estimates={"gpu-a": 6 * GiB})
    qwen = fixture_profile("qwen2.5-7b", neurons=["gpu-a"])
    placer, _, _ = placer_over(fleet, live_config(fleet.view, [qwen], poll_interval=0.05))
    placed = asyncio.ensure_future(placer.place(qwen, deadline=time.monotonic() + 60))
    async def looked_twice() -> bool:
        return fleet.made("poke").count(("gpu-a",)) >= 2

    await wait_until(looked_twice, timeout=30, what="the placer looks again at gpu-a")
    assert not placed.done()  # still waiting, not refused
    fleet.view = with_qwen("ready")  # (here another replica loaded it again)
    assert await asyncio.wait_for(placed, 30) == "gpu-a"
