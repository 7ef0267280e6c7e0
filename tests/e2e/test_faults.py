"""Faults across hosts: each neuron in its own network namespace behind its own link (see
tests/netns.py), the gateway in the root namespace. Whatever breaks, every accepted
request ends in a complete answer or an error in its client's dialect: never lost,
duplicated, silently truncated or left hanging past the configured timeouts."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex import ModelProfile

from ..gateway_support import RunningGateway, profile, running_gateway, wait_until
from ..netns import Network, NsNeuron, as_toml, unavailable
from ..serve_support import GatewayProcess, nodes_up, synthetic_neuron

pytestmark = [pytest.mark.anyio]

Spawn = Callable[..., NsNeuron]


def synthetic(model_id: str, spec: str, *, slots: int = 16) -> ModelProfile:
    return ModelProfile(id=model_id, source=f"synthetic:{spec}", harness="synthetic",
                        slots=slots, n_ctx=4096)


@pytest.fixture
def network() -> Iterator[Network]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    net = Network()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def spawn(network: Network, tmp_path: Path) -> Iterator[Spawn]:
    """spawn(name, preload=[profiles], **neuron.toml keys) -> a ready neuron on its own host."""
    started: list[NsNeuron] = []

    def start(name: str, *, preload: list[ModelProfile] | None = None,
              **config: Any) -> NsNeuron:
        config.setdefault("memory_budget", "16GiB")
        neuron = NsNeuron(network.host(name), {
            "preload": [as_toml(p) for p in preload or []], **config}, tmp_path)
        started.append(neuron)
        return neuron.start().wait_ready()

    try:
        yield start
    finally:
        for neuron in started:
            neuron.stop()


def nodes(*neurons: NsNeuron) -> list[tuple[str, Any]]:
    return [(n.host.name, n) for n in neurons]


# --- what a client got ------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "tell me about the fleet"}], "stream": True}


def outcome(status: int, body: str, tokens: int) -> str:
    """`ok` for a whole answer (exactly `tokens` tokens, one finish, one [DONE]) or
    `error` for an error in the OpenAI dialect; anything else fails the test."""
    if status != 200:
        error = json.loads(body)["error"]
        assert error["message"] and error["type"], body
        return "error"
    data = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    frames = [json.loads(d) for d in data if d != "[DONE]"]
    if frames and "error" in frames[-1]:
        assert "[DONE]" not in data, body  # an error ends the stream: no [DONE] after it
        assert frames[-1]["error"]["message"], body
        return "error"
    assert data and data[-1] == "[DONE]" and data.count("[DONE]") == 1, f"truncated: {body}"
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames
                   if f.get("choices"))
    finishes = [f["choices"][0]["finish_reason"] for f in frames
                if f.get("choices") and f["choices"][0].get("finish_reason")]
    assert finishes == ["length"], body
    assert len(text.split()) == tokens, f"not {tokens} tokens: {text!r}"
    assert frames[-1]["usage"]["completion_tokens"] == tokens, body
    return "ok"


async def stream(client: httpx.AsyncClient, model: str, tokens: int,
                 started: asyncio.Event | None = None) -> tuple[str, float]:
    """One streamed chat request: its outcome and how long it took."""
    begun = time.monotonic()
    async with client.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "model": model, "max_tokens": tokens}) as reply:
        lines = []
        async for line in reply.aiter_lines():
            lines.append(line)
            if started is not None and line.startswith("data: {"):
                started.set()
    return outcome(reply.status_code, "\n".join(lines), tokens), time.monotonic() - begun


async def fleet_view(gw: RunningGateway, node: str) -> dict[str, Any]:
    fleet = (await gw.client.get("/admin/fleet")).json()
    return next(n for n in fleet["nodes"] if n["name"] == node)


# --- one real model across namespaces ------------------------------------------------------

@pytest.mark.model
async def test_a_real_model_answers_across_namespaces(spawn: Spawn, gemma_path: Path,
                                                      cache_dir: Path) -> None:
    gemma = spawn("gemma-host", cache_dir=str(cache_dir))
    assert not gemma.url.startswith("http://127.")
    async with running_gateway(nodes(gemma), [profile("gemma")]) as gw:
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "gemma", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        assert gw.recorder.records[-1].node == "gemma-host"


# --- a link goes down and comes back --------------------------------------------------------

async def test_a_cut_link_marks_the_node_down_then_up_and_no_request_hangs(
        spawn: Spawn) -> None:
    model = synthetic("m", "rate=20,tokens=40")
    a = spawn("a", preload=[model])
    b = spawn("b", preload=[model])
    settings = {"poll_interval": 0.5, "poll_timeout": 2.0, "down_after": 2,
                "request_timeout": 3.0, "connect_timeout": 1.0, "retries": 2}
    # The longest any request may take once the link is cut: a full try per node.
    bound = (settings["connect_timeout"] + settings["request_timeout"]) * 3 + 5
    async with running_gateway(nodes(a, b), [model], routing="least-loaded",
                               **settings) as gw:
        firsts = [asyncio.Event() for _ in range(8)]
        before = [asyncio.ensure_future(stream(gw.client, "m", 40, e)) for e in firsts]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts)), 30)
        on_a = (await fleet_view(gw, "a"))["in_flight"].get("m", 0)
        assert on_a > 0, "least-loaded put no stream on a"
        a.host.link("down")
        cut = time.monotonic()
        during = [asyncio.ensure_future(stream(gw.client, "m", 5)) for _ in range(6)]
        results = await asyncio.wait_for(asyncio.gather(*before, *during), bound)
        assert all(took < bound for _, took in results)
        kinds = collections.Counter(kind for kind, _ in results)
        # Streams that were on a end with an error event; the rest complete, b's whole.
        assert kinds["error"] <= on_a + len(during), kinds
        assert kinds["ok"] >= len(before) - on_a, kinds

        # Marked down within down_after polls, each failing after at most its timeout.
        poll_timeout = settings["poll_timeout"]
        down_within = settings["down_after"] * (settings["poll_interval"] * 1.2 + poll_timeout)

        async def a_down() -> bool:
            return not (await fleet_view(gw, "a"))["up"]

        await wait_until(a_down, timeout=down_within + 2, what="a is marked down")
        assert [e.node for e in gw.recorder.kinds("node_down")] == ["a"]
        assert time.monotonic() - cut < bound + down_within
        served = len(gw.recorder.records)
        after = await asyncio.gather(*(stream(gw.client, "m", 5) for _ in range(6)))
        assert [kind for kind, _ in after] == ["ok"] * 6
        assert {r.node for r in gw.recorder.records[served:]} == {"b"}

        a.host.link("up")

        async def a_up() -> bool:
            return bool((await fleet_view(gw, "a"))["up"])

        await wait_until(a_up, timeout=settings["poll_interval"] * 1.2 + poll_timeout + 2,
                         what="a is marked up again")
        assert [e.node for e in gw.recorder.kinds("node_up")][-1] == "a"
        again = await asyncio.gather(*(stream(gw.client, "m", 5) for _ in range(4)))
        assert [kind for kind, _ in again] == ["ok"] * 4


# --- a slow, lossy link -----------------------------------------------------------------------

async def test_a_slow_lossy_link_still_completes_and_least_loaded_prefers_the_healthy_node(
        spawn: Spawn) -> None:
    model = synthetic("m", "rate=100,tokens=20")
    healthy = spawn("healthy", preload=[model])
    slow = spawn("slow", preload=[model])
    applied = slow.host.impair()
    async with running_gateway(nodes(healthy, slow), [model], routing="least-loaded",
                               poll_interval=1.0, down_after=5) as gw:

        async def worker() -> list[str]:
            return [(await stream(gw.client, "m", 20))[0] for _ in range(6)]

        results = await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(12))), 240)
        assert [kind for r in results for kind in r] == ["ok"] * 72, applied
        served = collections.Counter(r.node for r in gw.recorder.records)
        assert served["healthy"] + served["slow"] == 72
        # least-loaded keeps in-flight work level, so the faster node finishes more of it.
        assert served["healthy"] > 1.5 * served["slow"], (served, applied)
        if "delay" in applied:  # netem or its userspace stand-in: 300 ms each way
            first = {node: min(r.ttft_seconds or 0 for r in gw.recorder.records
                               if r.node == node) for node in ("healthy", "slow")}
            assert first["slow"] >= 0.6 > first["healthy"] * 4, (first, applied)
        if applied.startswith("iptables"):  # the stand-in counts what it dropped
            counts = slow.host.lift()
            assert 0 < counts["dropped"] < 0.15 * counts["queued"], counts


# --- a neuron restarted with other models --------------------------------------------------

async def test_a_restarted_neuron_with_other_models_converges_within_two_polls(
        spawn: Spawn) -> None:
    m1, m2, m3 = (synthetic(f"m{i}", "rate=200,tokens=5") for i in (1, 2, 3))
    x = spawn("x", preload=[m1, m2])
    poll = 0.5
    async with running_gateway(nodes(x), [m1, m2, m3], poll_interval=poll) as gw:

        async def holds(ids: set[str]) -> bool:
            models = (await fleet_view(gw, "x"))["models"]
            return {m["id"] for m in models if m["state"] == "ready"} == ids and \
                len(models) == len(ids)

        await wait_until(lambda: holds({"m1", "m2"}), timeout=10, what="first view")
        x.stop()
        x.start(preload=[as_toml(m) for m in (m2, m3)]).wait_ready()
        async with httpx.AsyncClient(base_url=x.url, timeout=10) as direct:
            async def preloaded() -> bool:
                models = (await direct.get("/models")).json()["models"]
                return {m["id"] for m in models if m["state"] == "ready"} == {"m2", "m3"}

            await wait_until(preloaded, timeout=30, what="the neuron has preloaded")
        # Two intervals with their ±20% jitter, and one poll's round trip.
        await wait_until(lambda: holds({"m2", "m3"}), timeout=2 * poll * 1.2 + 0.5,
                         what="the gateway's view converges")
        catalogue = {m["id"]: m for m in (await gw.client.get("/v1/models")).json()["data"]}
        assert catalogue["m3"]["loaded_on"] == ["x"] and catalogue["m1"]["loaded_on"] == []
        assert [kind for kind, _ in await asyncio.gather(
            stream(gw.client, "m3", 5), stream(gw.client, "m2", 5))] == ["ok", "ok"]


# --- two replicas race for the room of one ------------------------------------------------

async def test_two_replicas_racing_for_the_room_of_one_both_get_answers(spawn: Spawn) -> None:
    big1 = synthetic("big1", "rate=200,tokens=5,bytes=2GiB,load_ms=1500", slots=1)
    big2 = synthetic("big2", "rate=200,tokens=5,bytes=2GiB,load_ms=1500", slots=1)
    node = spawn("n", memory_budget="3GiB")
    async with running_gateway(nodes(node), [big1, big2], load_timeout=60) as one, \
            running_gateway(nodes(node), [big1, big2], load_timeout=60) as two:
        results = await asyncio.wait_for(asyncio.gather(
            stream(one.client, "big1", 5), stream(two.client, "big2", 5)), 90)
        assert [kind for kind, _ in results] == ["ok", "ok"], results
        # Exactly one load was refused by the neuron (it checks its own budget), and the
        # refused replica then evicted the other's model once it was idle.
        refused = one.recorder.kinds("load_failed") + two.recorder.kinds("load_failed")
        assert len(refused) == 1 and "budget" in (refused[0].reason or ""), refused
        loser = one if one.recorder.kinds("load_failed") else two
        assert [e.model for e in loser.recorder.kinds("evicted")] == \
            ["big1" if loser is two else "big2"]


# --- gateway SIGTERM while streams are in flight -------------------------------------------

@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(neurons: list[NsNeuron], models: list[ModelProfile],
              **gateway: Any) -> GatewayProcess:
        started.append(GatewayProcess.configured(
            tmp_path, [{"name": n.host.name, "endpoint": n.url} for n in neurons],
            [as_toml(m) for m in models], **gateway))
        return started[-1]

    try:
        yield start
    finally:
        for gateway in started:
            gateway.stop()


async def test_sigterm_drains_fifty_streams_refuses_new_requests_and_exits_in_time(
        spawn: Spawn, gateway_process: Callable[..., GatewayProcess]) -> None:
    model = synthetic("m", "rate=10,tokens=30", slots=32)  # three-second streams
    neurons = [spawn("p", preload=[model]), spawn("q", preload=[model])]
    drain_timeout = 20.0
    gw = gateway_process(neurons, [model], drain_timeout=drain_timeout)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60,
                                 limits=httpx.Limits(max_connections=100)) as client:
        async def all_up() -> bool:
            assert gw.proc.poll() is None, gw.log()
            try:
                health = (await client.get("/health")).json()
            except httpx.HTTPError:
                return False
            return bool(health["nodes_up"] == 2)

        await wait_until(all_up, timeout=60, what="the gateway sees both neurons")
        firsts = [asyncio.Event() for _ in range(50)]
        streams = [asyncio.ensure_future(stream(client, "m", 30, e)) for e in firsts]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts)), 60)
        os.kill(gw.proc.pid, signal.SIGTERM)
        signalled = time.monotonic()

        async def refusing() -> bool:
            return (await client.get("/health")).status_code == 503

        await wait_until(refusing, timeout=5, what="the gateway refuses new requests")
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as fresh:
            refused = await fresh.post("/v1/chat/completions",
                                       json={**CHAT, "model": "m", "max_tokens": 3})
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert outcome(refused.status_code, refused.text, 3) == "error"
            anthropic = await fresh.post("/v1/messages", json={
                "model": "m", "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}]})
            assert anthropic.json()["type"] == "error", anthropic.text
        results = await asyncio.wait_for(asyncio.gather(*streams), drain_timeout)
        assert [kind for kind, _ in results] == ["ok"] * 50
    code = await asyncio.to_thread(gw.proc.wait, drain_timeout + 5)
    assert time.monotonic() - signalled < drain_timeout + 5
    assert code == 0, gw.log()[-3000:]
    assert "draining: " in gw.log()


async def _cut_stream(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                      started: asyncio.Event) -> tuple[int, list[str], str | None]:
    """One stream read until the gateway ends it: its status, its SSE lines, and the
    transport error that ended it (None when the response ended as HTTP allows)."""
    lines: list[str] = []
    status = 0
    try:
        async with client.stream("POST", path, json=body,
                                 headers={"anthropic-version": "2023-06-01"}) as reply:
            status = reply.status_code
            async for line in reply.aiter_lines():
                lines.append(line)
                if line.startswith("data: {"):
                    started.set()
    except httpx.TransportError as exc:
        return status, lines, type(exc).__name__
    return status, lines, None


async def test_sigterm_past_drain_timeout_cuts_open_streams_with_an_error_event(
        tmp_path: Path) -> None:
    """Requests that outlive `drain_timeout` are cut, and visibly so: each stream ends
    with an error event in its client's dialect, never a `[DONE]`, a finish_reason or a
    `message_stop`, and a whole answer not yet begun is a 503. Loopback neuron and
    gateway processes: no namespaces needed."""
    slow = {"id": "slow", "source": "synthetic:rate=2,tokens=400", "harness": "synthetic",
            "n_ctx": 4096, "slots": 8}  # 200-second streams
    drain_timeout = 2.0
    neuron = synthetic_neuron(tmp_path, name="n1")
    gw = GatewayProcess.configured(tmp_path, [{"name": "n1", "endpoint": neuron.url}], [slow],
                                   drain_timeout=drain_timeout)
    try:
        await asyncio.to_thread(gw.wait, nodes_up(1), "the neuron is up")
        chat = {**CHAT, "model": "slow", "max_tokens": 400}
        requests = [("/v1/chat/completions", chat)] * 3 + [
            ("/v1/completions", {"model": "slow", "prompt": "go", "max_tokens": 400,
                                 "stream": True}),
            ("/v1/messages", {"model": "slow", "max_tokens": 400, "stream": True,
                              "messages": [{"role": "user", "content": "go"}]})]
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            firsts = [asyncio.Event() for _ in requests]
            streams = [asyncio.ensure_future(_cut_stream(client, path, body, first))
                       for (path, body), first in zip(requests, firsts, strict=True)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts)), 60)
            whole = asyncio.ensure_future(client.post("/v1/chat/completions", json={
                **chat, "stream": False}))

            async def all_in_flight() -> bool:
                fleet = (await client.get("/admin/fleet")).json()
                return bool(fleet["nodes"][0]["in_flight"].get("slow") == len(requests) + 1)

            await wait_until(all_in_flight, timeout=30, what="every request is in flight")
            os.kill(gw.proc.pid, signal.SIGTERM)
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as fresh:
                async def refusing() -> bool:
                    return (await fresh.get("/health")).status_code == 503

                await wait_until(refusing, timeout=10, what="the gateway refuses new requests")
                refused = await fresh.post("/v1/chat/completions", json={**chat, "max_tokens": 3})
                assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
                assert outcome(refused.status_code, refused.text, 3) == "error"
            # Bounded, not timed: the drain, hypercorn's own grace, and slack for a slow host.
            results = await asyncio.wait_for(asyncio.gather(*streams), drain_timeout + 60)
            cut = await asyncio.wait_for(whole, drain_timeout + 60)
        code = await asyncio.to_thread(gw.proc.wait, drain_timeout + 60)
        assert code == 0, gw.log()[-3000:]
        assert f"{len(requests) + 1} requests still in flight are cut" in gw.log(), gw.log()
        assert "Traceback" not in gw.log(), gw.log()
        # The request log (and so the metrics) record the cuts as the gateway's 503s,
        # not as clients that went away (499).
        finished = [line for line in gw.log().splitlines() if "model=slow" in line]
        assert sum("status=503" in line for line in finished) == len(requests) + 1, finished
        assert not any("status=499" in line for line in finished), finished
        # A whole answer not yet begun: a 503 the client may retry elsewhere.
        assert cut.status_code == 503 and int(cut.headers["retry-after"]) >= 1, cut.text
        assert "drain_timeout" in cut.json()["error"]["message"], cut.text
        for (path, _), (status, lines, transport) in zip(requests, results, strict=True):
            assert status == 200 and transport is None, (path, transport, lines)
            data = [line[6:] for line in lines if line.startswith("data: ")]
            assert "[DONE]" not in data, (path, lines)
            frames = [json.loads(d) for d in data]
            assert frames[:-1] and all("error" not in f for f in frames[:-1]), (path, lines)
            last = frames[-1]
            if path == "/v1/messages":  # Anthropic: an `error` event, no message_stop
                assert lines[-3:] == ["event: error", f"data: {data[-1]}", ""], lines
                assert last["type"] == "error" and "drain_timeout" in last["error"]["message"]
                assert all(f["type"] != "message_stop" for f in frames), lines
            else:  # OpenAI: an error frame, no finish_reason
                assert "drain_timeout" in last["error"]["message"], lines
                assert not any(c.get("finish_reason") for f in frames[:-1]
                               for c in f["choices"]), lines
    finally:
        gw.stop()
        neuron.stop()
