"""Visible loads: a stream waiting for a cold load gets its first byte at once and the
load's progress before its first token (an SSE comment, for Anthropic clients too: no
event may come before their message_start, which waits for the prompt's counts), and
GET /admin/events tells of loads, their progress, evictions, pins and drains. Synthetic
neurons whose loads take a few seconds (in ten steps of progress, as llama.cpp reports
them): what is tested is the gateway, not inference."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from cortex import ModelProfile

from ..conftest import ROOT, NeuronProcess, running_neuron
from ..gateway_support import RunningGateway, running_gateway, wait_until

pytestmark = [pytest.mark.anyio]


def slow(model_id: str, size: str = "1GiB", load_ms: int = 2500) -> ModelProfile:
    return ModelProfile(id=model_id, harness="synthetic",
                        source=f"synthetic:rate=200,tokens=3,bytes={size},load_ms={load_ms}")


# Room for one of big1, big2 on the 3 GiB node: loading one evicts the other.
PROFILES = [slow("cold"), slow("cold2"), slow("big1", "2GiB", 300), slow("big2", "2GiB", 300)]
CHAT = {"max_tokens": 3, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
# Long enough that the first byte cannot be a keep-alive's: the interval's own wait.
KEEPALIVE = 5.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"name": "a", "memory_budget": "3GiB"}, tmp_path) as neuron:
        yield neuron


@contextlib.asynccontextmanager
async def gateway(node: NeuronProcess) -> AsyncIterator[RunningGateway]:
    async with running_gateway([("a", node)], PROFILES,
                               keepalive_interval=KEEPALIVE) as gw:
        yield gw


async def _lines_until_first_token(gw: RunningGateway, path: str, body: dict[str, Any],
                                   headers: dict[str, str], token: bytes
                                   ) -> tuple[float, list[bytes]]:
    """Seconds to the first byte of the answer, and its lines up to the first token."""
    sent = time.monotonic()
    first: float | None = None
    lines: list[bytes] = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client, \
            client.stream("POST", path, json=body, headers=headers) as reply:
        assert reply.status_code == 200
        buffer = b""
        async for chunk in reply.aiter_raw():
            first = first if first is not None else time.monotonic() - sent
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            lines.extend(done)
            if any(token in line for line in done):
                break
    assert first is not None
    return first, lines


async def test_an_openai_stream_gets_a_byte_at_once_then_progress(
        node: NeuronProcess) -> None:
    async with gateway(node) as gw:
        first, lines = await _lines_until_first_token(
            gw, "/v1/chat/completions", {**CHAT, "model": "cold"}, {}, b'"content"')
        assert first < 1.0, f"first byte after {first:.2f}s"
        progress = [line for line in lines if line.startswith(b": loading cold on a ")]
        assert progress and progress[0] == b": loading cold on a 0%", lines
        assert any(line.endswith(b"%") and not line.endswith(b" 0%") for line in progress), \
            lines
        # The SDK reads such a stream as usual (a warm model here, so nothing to show).
        sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0)
        try:
            stream = await sdk.chat.completions.create(model="cold", stream=True, max_tokens=3,
                                                       messages=CHAT["messages"])
            assert [c async for c in stream]
        finally:
            await sdk.close()


async def test_an_anthropic_stream_gets_comments_while_it_loads(node: NeuronProcess) -> None:
    async with gateway(node) as gw:
        headers = {"anthropic-version": "2023-06-01", "x-api-key": "k"}
        first, lines = await _lines_until_first_token(
            gw, "/v1/messages", {**CHAT, "model": "cold2"}, headers, b"text_delta")
        assert first < 1.0, f"first byte after {first:.2f}s"
        start = lines.index(b"event: message_start")
        before = [line for line in lines[:start] if line]
        assert all(line.startswith(b": ") for line in before), lines
        progress = [line for line in before if line.startswith(b": loading cold2 on a ")]
        assert progress and progress[0] == b": loading cold2 on a 0%", lines
        assert any(not line.endswith(b" 0%") for line in progress), lines  # as it moved
        assert b"event: ping" not in lines
        # "user: hi": the synthetic harness's count of the prompt, known before output.
        assert b'"input_tokens":2,' in lines[start + 1], lines[start + 1]
        # The SDK reads such a stream as usual, comments and all.
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0)
        try:
            await gw.client.post("/admin/models/cold2/unload")
            async with sdk.messages.stream(model="cold2", max_tokens=3,
                                           messages=[{"role": "user", "content": "hi"}]) as s:
                kinds = [event.type async for event in s]
                final = await s.get_final_message()
            assert kinds[0] == "message_start" and final.content
            assert final.usage.input_tokens == 2
        finally:
            await sdk.close()


class Events:
    """What GET /admin/events streamed, read in the background."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.open = False  # its first line came: this stream is subscribed

    async def read(self, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client, \
                client.stream("GET", "/admin/events") as reply:
            name = ""
            async for line in reply.aiter_lines():
                self.open = True
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    self.seen.append((name, json.loads(line[6:])))

    def of(self, kind: str, model: str | None = None) -> list[dict[str, Any]]:
        return [e for k, e in self.seen if k == kind and (model is None
                                                          or e.get("model") == model)]

    async def wait_for(self, kind: str, model: str | None = None) -> dict[str, Any]:
        async def seen() -> bool:
            return bool(self.of(kind, model))

        await wait_until(seen, timeout=30, what=f"a {kind} event for {model}")
        return self.of(kind, model)[0]


async def test_admin_events_tell_of_loads_evictions_pins_and_drains(
        node: NeuronProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cortex.gateway.loader")
    async with gateway(node) as gw:
        events = Events()
        reader = asyncio.ensure_future(events.read(gw.url))
        try:
            async def opened() -> bool:
                return events.open

            await wait_until(opened, timeout=10, what="the event stream is open")
            loaded = await gw.client.post("/admin/models/cold/load")
            assert loaded.status_code == 200, loaded.text
            started = await events.wait_for("load_started", "cold")
            assert started["node"] == "a" and started["bytes"] == 2**30, started
            done = await events.wait_for("loaded", "cold")
            progress = [e["progress"] for e in events.of("load_progress", "cold")]
            assert progress and all(0 < p <= 1 for p in progress), events.seen
            assert progress == sorted(progress)
            assert done["seconds"] > 0

            assert (await gw.client.post("/admin/models/big1/load")).status_code == 200
            assert (await gw.client.post("/admin/models/big2/load")).status_code == 200
            evicted = await events.wait_for("evicted")
            assert evicted["node"] == "a" and evicted["model"] in ("cold", "big1"), evicted
            assert "big1" in (await events.wait_for("load_started", "big2"))["victims"]
            # The log says the same: each load as it starts, and as it ends.
            said = [r.getMessage() for r in caplog.records if r.name == "cortex.gateway.loader"]
            assert "loading cold on a (estimate 1.00 GiB)" in said, said
            assert any(line.startswith("loaded cold on a in ") for line in said), said
            evicting = [line for line in said
                        if line.startswith("loading big2 on a (estimate 2.00 GiB; evicting ")]
            assert evicting and "big1" in evicting[0] and evicting[0].endswith(" (lru))"), said

            assert (await gw.client.post("/admin/models/big2/pin")).status_code == 200
            await events.wait_for("pinned", "big2")
            assert (await gw.client.post("/admin/nodes/a/drain")).status_code == 200
            await events.wait_for("draining")
            assert (await gw.client.post("/admin/nodes/a/undrain")).status_code == 200
            await events.wait_for("undrained")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader



async def _cli(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", *args, "--url", url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def test_cortex_load_shows_the_progress(node: NeuronProcess) -> None:
    async with gateway(node) as gw:
        process = await _cli(gw.url, "load", "cold")
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        text = out.decode()
        assert process.returncode == 0, text
        lines = text.splitlines()
        assert lines[0] == "loading cold on a", text
        assert any(line.startswith("loading cold on a: ") and line.endswith("%")
                   for line in lines[1:-1]), text
        assert lines[-1] == "cold is ready on a", text


async def test_status_watch_redraws_when_the_fleet_changes(node: NeuronProcess) -> None:
    async with gateway(node) as gw:
        # Every 10 minutes: a second frame this side of that comes from an event.
        process = await _cli(gw.url, "status", "--watch", "600", "--count", "2")
        try:
            assert process.stdout is not None
            first = await asyncio.wait_for(process.stdout.readline(), 30)
            assert first.startswith(b"cortex status"), first
            loaded = await gw.client.post("/admin/models/big1/load")
            assert loaded.status_code == 200, loaded.text
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0
            assert rest.count(b"cortex status") == 1 and b"big1" in rest, rest
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_a_replica_tells_of_pins_and_drains_made_through_another(
        node: NeuronProcess) -> None:
    async with gateway(node) as one, gateway(node) as two:
        events = Events()
        reader = asyncio.ensure_future(events.read(two.url))
        try:
            async def opened() -> bool:
                return events.open

            await wait_until(opened, timeout=10, what="the event stream is open")
            assert (await one.client.post("/admin/models/big1/pin")).status_code == 200
            assert (await events.wait_for("pinned", "big1"))["node"] == "a"
            assert (await one.client.post("/admin/models/big1/unpin")).status_code == 200
            await events.wait_for("unpinned", "big1")
            assert (await one.client.post("/admin/nodes/a/drain")).status_code == 200
            await events.wait_for("draining")
            assert (await one.client.post("/admin/nodes/a/undrain")).status_code == 200
            await events.wait_for("undrained")
            assert not events.of("load_started")  # loads are the replica's own
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader
