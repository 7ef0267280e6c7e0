"""A request that kills its neuron reaches no other node (docs/operations.md, "A request
that kills a neuron"): the client gets 502 in its dialect, the node is marked down, and
the same request is refused for `poison_ttl` instead of killing the next node.

The killer is real: neurons started with `[harness.synthetic] die_on` SIGKILL themselves
on a prompt containing that marker, before the first token, as a crash in llama.cpp
would. A connection a neuron breaks while it lives on cannot be made on demand with a
real neuron, so those tests use a stand-in that answers `/status` and drops requests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import msgspec
import openai
import pytest

from cortex import ModelProfile
from cortex.config import GatewaySection
from cortex.errors import Quarantined
from cortex.gateway.quarantine import MAX_FINGERPRINTS, Quarantine, fingerprint

from ..conftest import NeuronProcess
from ..gateway_support import neuron_models, profile, running_gateway, wait_until

pytestmark = pytest.mark.anyio

POISON = "POISON-PILL"
HEADERS = {"anthropic-version": "2023-06-01"}


def synthetic(neurons: list[str], spec: str = "rate=0,tokens=3") -> ModelProfile:
    return msgspec.structs.replace(profile("s", neurons=neurons), harness="synthetic",
                                   source=f"synthetic:{spec}")


def killable(start_neuron: Callable[..., NeuronProcess], name: str) -> NeuronProcess:
    neuron: NeuronProcess = start_neuron({"name": name,
                                          "harness": {"synthetic": {"die_on": POISON}}})
    return neuron


async def last_used(neuron: NeuronProcess) -> float:
    return float((await neuron_models(neuron))["s"]["last_used"])


async def ask(dialect: str, url: str, content: str, *, retries: int = 0) -> str:
    """One request through the official SDK of `dialect`; the reply's text."""
    if dialect == "openai":
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=retries,
                                      timeout=60) as client:
            reply = await client.chat.completions.create(
                model="s", messages=[{"role": "user", "content": content}])
            return reply.choices[0].message.content or ""
    async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=retries,
                                        timeout=60) as client:
        message = await client.messages.create(
            model="s", max_tokens=3, messages=[{"role": "user", "content": content}])
        return "".join(b.text for b in message.content if b.type == "text")


async def the_dead(neurons: dict[str, NeuronProcess], count: int = 1) -> list[str]:
    """The neurons that died, once `count` have: a process whose sockets are closed may
    not be reaped yet, so wait for it (bounded)."""
    def dead() -> list[str]:
        return [name for name, n in neurons.items() if n.proc.poll() is not None]

    async def enough() -> bool:
        return len(dead()) >= count

    await wait_until(enough, timeout=10, what=f"{count} neuron(s) have exited")
    return dead()


def code_of(error: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = error.body
    assert isinstance(body, dict), body
    detail = body.get("error", body)
    return str(detail.get("code") or detail.get("type"))


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_a_request_that_kills_its_neuron_reaches_no_other_node(
        start_neuron: Callable[..., NeuronProcess], dialect: str) -> None:
    a, b = killable(start_neuron, "a"), killable(start_neuron, "b")
    # A long poll interval: the gateway learns of the death only from the request.
    async with running_gateway([("a", a), ("b", b)], [synthetic(["a", "b"])],
                               poll_interval=30) as gw:
        for node in ("a", "b"):  # ready on both: a replay would cost nothing to start
            assert (await gw.client.post("/admin/models/s/load",
                                         json={"node": node})).status_code == 200
        before = {"a": await last_used(a), "b": await last_used(b)}
        errors = (openai.APIStatusError, anthropic.APIStatusError)

        with pytest.raises(errors) as died:
            await ask(dialect, gw.url, f"say {POISON}")
        assert died.value.status_code == 502, died.value
        assert code_of(died.value) == ("upstream_died" if dialect == "openai" else "api_error")
        assert "died while it held this request" in died.value.message
        dead = await the_dead({"a": a, "b": b})
        assert len(dead) == 1, dead
        survivor = b if dead == ["a"] else a
        assert await last_used(survivor) == before["b" if dead == ["a"] else "a"]
        health = (await gw.client.get("/health")).json()
        assert health["nodes_up"] == 1, health  # marked down at once, not after polls
        assert gw.recorder.records[-1].retries == 0

        with pytest.raises(errors) as refused:
            await ask(dialect, gw.url, f"say {POISON}")
        assert refused.value.status_code == 400, refused.value
        assert code_of(refused.value) == ("request_quarantined" if dialect == "openai"
                                          else "invalid_request_error")
        assert f"neuron `{dead[0]}` died" in refused.value.message
        assert gw.recorder.records[-1].node is None
        assert survivor.proc.poll() is None
        assert await last_used(survivor) == before["b" if dead == ["a"] else "a"]

        # Anything else is served by the node that lives.
        assert await ask(dialect, gw.url, "say hello")
        assert gw.recorder.records[-1].node != dead[0]


async def test_the_sdks_own_retry_of_the_502_is_refused_too(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    # The official SDKs retry a 502 on their own: the replay meets the quarantine (a 400,
    # which they do not retry).
    a, b = killable(start_neuron, "a"), killable(start_neuron, "b")
    async with running_gateway([("a", a), ("b", b)], [synthetic(["a", "b"])],
                               poll_interval=30) as gw:
        with pytest.raises(openai.BadRequestError) as caught:
            await ask("openai", gw.url, f"say {POISON}", retries=2)
        assert code_of(caught.value) == "request_quarantined"
        assert len(await the_dead({"a": a, "b": b})) == 1
        assert [r.status for r in gw.recorder.records] == [502, 400]


async def test_poison_retries_lets_a_request_that_killed_a_node_try_one_more(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    a, b = killable(start_neuron, "a"), killable(start_neuron, "b")
    async with running_gateway([("a", a), ("b", b)], [synthetic(["a", "b"])],
                               poll_interval=30, poison_retries=1) as gw:
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": POISON}]})
        assert reply.status_code == 502, reply.text
        assert await the_dead({"a": a, "b": b}, 2) == ["a", "b"]
        assert gw.recorder.records[-1].retries == 1
        again = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": POISON}]})
        assert again.status_code == 400, again.text
        assert "neurons `" in again.json()["error"]["message"]


@pytest.mark.parametrize("down_after", [3, 1])
async def test_a_neuron_refusing_the_connection_is_still_retried_elsewhere(
        start_neuron: Callable[..., NeuronProcess], down_after: int) -> None:
    # Nothing was sent to a neuron that is gone: that request goes to the next node.
    # With down_after = 1 the request's own failure marks the node down, which must not
    # cut the request itself short (it is watching that node for a first byte).
    a, b = killable(start_neuron, "a"), killable(start_neuron, "b")
    async with running_gateway([("a", a), ("b", b)], [synthetic(["a", "b"])],
                               poll_interval=30, down_after=down_after) as gw:
        assert (await gw.client.post("/admin/models/s/load",
                                     json={"node": "a"})).status_code == 200
        a.proc.kill()
        a.proc.wait(10)
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
        assert gw.recorder.records[-1].node == "b"
        assert gw.recorder.records[-1].retries == 1
        assert len(gw.quarantine) == 0


async def test_a_neuron_answering_4xx_is_never_retried(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    a, b = killable(start_neuron, "a"), killable(start_neuron, "b")
    tiny = msgspec.structs.replace(synthetic(["a", "b"]), n_ctx=8)
    async with running_gateway([("a", a), ("b", b)], [tiny], poll_interval=30) as gw:
        for node in ("a", "b"):
            assert (await gw.client.post("/admin/models/s/load",
                                         json={"node": node})).status_code == 200
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": "word " * 20}]})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == "context_length_exceeded"
        assert gw.recorder.records[-1].retries == 0


# --- a neuron that breaks the connection and lives on (a stand-in: see the docstring) ------

@contextlib.asynccontextmanager
async def dropping_neuron(uptime: float) -> AsyncIterator[str]:
    """Answers `/status` (ready with `s`, up for `uptime` seconds) and closes the
    connection on every other request after reading it."""
    status = {"node": "flaky", "version": "0", "cpu_only": True, "budget_bytes": 2**30,
              "reserved_bytes": 0, "free_bytes": 2**30, "uptime_seconds": uptime,
              "models": [{"id": "s", "state": "ready", "source": "synthetic:rate=0,tokens=3",
                          "harness": "synthetic", "n_ctx": 2048, "slots": 4,
                          "estimate": {"weights": 0, "kv_cache": 0, "overhead": 0,
                                       "total": 0}}]}
    payload = msgspec.json.encode(status)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if not head.startswith(b"GET /status"):
                    break  # the request was read: drop it, as a dying neuron would
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(payload) + payload)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


class _Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url


async def test_a_connection_broken_by_a_neuron_that_lives_on_is_retried(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    b = killable(start_neuron, "b")
    async with dropping_neuron(uptime=10**6) as url, \
            running_gateway([("flaky", _Endpoint(url)), ("b", b)],  # type: ignore[list-item]
                            [synthetic(["flaky", "b"])], poll_interval=30) as gw:
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
        assert gw.recorder.records[-1].node == "b"
        assert len(gw.quarantine) == 0


async def test_a_neuron_that_restarted_while_holding_the_request_counts_as_dead(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    b = killable(start_neuron, "b")
    async with dropping_neuron(uptime=0.0) as url, \
            running_gateway([("flaky", _Endpoint(url)), ("b", b)],  # type: ignore[list-item]
                            [synthetic(["flaky", "b"])], poll_interval=30) as gw:
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 502, reply.text
        assert reply.json()["error"]["code"] == "upstream_died"
        assert "s" not in await neuron_models(b)  # never loaded there for a replay
        assert len(gw.quarantine) == 1


# --- the quarantine itself -------------------------------------------------------------------

def _quarantine(**settings: Any) -> tuple[Quarantine, list[float]]:
    now = [0.0]
    section = GatewaySection(**settings)
    return Quarantine(lambda: section, clock=lambda: now[0]), now


def test_the_quarantine_refuses_past_the_budget_until_the_ttl_passes() -> None:
    quarantine, now = _quarantine(poison_retries=1, poison_ttl=60)
    key = fingerprint("m", "/v1/chat/completions", b"{}")
    assert quarantine.record(key, "a") == 1
    quarantine.check(key)  # one death: within poison_retries = 1
    assert quarantine.record(key, "b") == 2
    with pytest.raises(Quarantined) as refused:
        quarantine.check(key)
    assert "`a`, `b`" in refused.value.message and refused.value.retry_after == 60
    quarantine.check(fingerprint("m", "/v1/completions", b"{}"))  # another route
    quarantine.check(fingerprint("n", "/v1/chat/completions", b"{}"))  # another model
    now[0] = 59.0
    with pytest.raises(Quarantined):
        quarantine.check(key)
    now[0] = 60.0
    quarantine.check(key)
    assert len(quarantine) == 0


def test_the_quarantine_holds_at_most_max_fingerprints() -> None:
    quarantine, now = _quarantine(poison_ttl=600)
    keys = [fingerprint("m", "/p", str(i).encode()) for i in range(MAX_FINGERPRINTS + 10)]
    for key, tick in zip(keys, itertools.count(), strict=False):
        now[0] = tick * 0.001
        quarantine.record(key, "a")
    assert len(quarantine) == MAX_FINGERPRINTS
    quarantine.check(keys[0])  # the oldest were forgotten first
    with pytest.raises(Quarantined):
        quarantine.check(keys[-1])


def test_poison_ttl_zero_remembers_nothing() -> None:
    quarantine, _ = _quarantine(poison_ttl=0)
    key = fingerprint("m", "/p", b"{}")
    assert quarantine.record(key, "a") == 1
    quarantine.check(key)
    assert len(quarantine) == 0


def test_fingerprints_keep_model_route_and_body_apart() -> None:
    assert fingerprint("ab", "/c", b"") != fingerprint("a", "b/c", b"")
    assert fingerprint("a", "/c", b"x") != fingerprint("a", "/c", b"y")

