"""Two gateway replicas that share nothing agree on where a conversation lives: the real
OpenAI client alternates between them, each turn lands on the same node and reuses the
KV cache the last one left there (`cached_tokens` grows turn after turn), and when a
node leaves the fleet only the conversations that lived on it move, the same way on
both replicas. Three real neurons serve the bundled Gemma; the fleet is a file both
replicas discover, so a node leaves as it would in production."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, neuron_fleet, profile, running_gateway
from ..gateway_support import wait_until as poll

pytestmark = [pytest.mark.model, pytest.mark.anyio]

CHAT = profile("chat", slots=2, n_ctx=4096)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
          cache_dir: Path) -> Iterator[dict[str, NeuronProcess]]:
    with neuron_fleet(tmp_path_factory.mktemp("affinity"), cache_dir,
                      ["a", "b", "c"]) as started:
        yield started


def listing(fleet: dict[str, NeuronProcess], names: list[str]) -> str:
    return "".join(f'[[neurons]]\nname = "{n}"\nendpoint = "{fleet[n].url}"\n\n'
                   for n in names)


class Conversation:
    """One conversation's history, and what each of its turns got."""

    def __init__(self, topic: str) -> None:
        self.messages: list[dict[str, str]] = [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": f"Tell me about {topic}."}]
        self.nodes: list[str] = []
        self.prompt_tokens: list[int] = []
        self.cached_tokens: list[int] = []

    async def turn(self, gw: RunningGateway) -> None:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none") as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=self.messages,  # type: ignore[arg-type]
                max_tokens=6, temperature=0)
        reply = raw.parse()
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        self.prompt_tokens.append(reply.usage.prompt_tokens)
        self.cached_tokens.append(reply.usage.prompt_tokens_details.cached_tokens or 0)
        # The node that served it, as the replica recorded it under its x-request-id.
        request_id = raw.headers["x-request-id"]

        async def recorded() -> bool:
            return any(r.request_id == request_id for r in gw.recorder.records)

        await poll(recorded, timeout=10, what="the request is recorded")
        [node] = [r.node for r in gw.recorder.records if r.request_id == request_id]
        assert node is not None
        self.nodes.append(node)
        self.messages += [{"role": "assistant", "content": reply.choices[0].message.content
                           or ""},
                          {"role": "user", "content": "And then?"}]

    def reused(self, turn: int) -> bool:
        """Turn `turn` (0-based) reused all of the turn before's prompt from the KV cache."""
        return self.cached_tokens[turn] >= self.prompt_tokens[turn - 1]


@contextlib.asynccontextmanager
async def replicas(fleet: dict[str, NeuronProcess], path: Path
                   ) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    table = [{"source": "file", "linger": 0, "options": {"path": str(path), "interval": 0.2}}]
    nodes = list(fleet.items())
    async with running_gateway(nodes, [CHAT], discovery=table) as one, \
            running_gateway(nodes, [CHAT], discovery=table) as two:
        yield one, two


def ready_on(gw: RunningGateway) -> set[str]:
    return {n.name for n in gw.placer.snapshot().nodes
            if any(m.id == "chat" and m.state == "ready" for m in n.models)}


def wait_until(check: Callable[[], bool], *, timeout: float, what: str
               ) -> Awaitable[None]:
    async def checked() -> bool:
        return check()

    return poll(checked, timeout=timeout, what=what)


async def test_replicas_keep_a_conversation_on_one_node_and_move_only_those_of_a_node_that_left(
        fleet: dict[str, NeuronProcess], tmp_path: Path) -> None:
    path = tmp_path / "neurons.toml"
    path.write_text(listing(fleet, ["a", "b", "c"]))
    async with replicas(fleet, path) as (one, two):
        for name in fleet:  # a copy on every node: the conversation's hash picks among them
            loaded = await one.client.post(f"/admin/models/chat/load?node={name}")
            assert loaded.status_code == 200, loaded.text
        for gw in (one, two):
            await wait_until(partial(lambda gw: ready_on(gw) == {"a", "b", "c"}, gw),
                             timeout=60, what="both replicas see the model ready everywhere")

        # One conversation, the client alternating between the replicas.
        first = Conversation("lighthouses")
        for index in range(4):
            await first.turn((one, two)[index % 2])
        assert len(set(first.nodes)) == 1, first.nodes
        assert all(first.reused(t) for t in range(1, 4)), (first.prompt_tokens,
                                                            first.cached_tokens)
        assert first.cached_tokens == sorted(set(first.cached_tokens))  # grows every turn

        # Others, each asked once on each replica: both send it to the same node.
        others = [Conversation(topic) for topic in ("glaciers", "violins", "comets",
                                                    "orchids")]
        for conversation in others:
            await conversation.turn(one)
            await conversation.turn(two)
            assert conversation.nodes[0] == conversation.nodes[1], conversation.nodes
        homes = {id(c): c.nodes[-1] for c in [first, *others]}
        gone = first.nodes[-1]
        assert any(home != gone for home in homes.values()), homes

        # The first conversation's node leaves the fleet (both replicas read the file).
        path.write_text(listing(fleet, [n for n in fleet if n != gone]))
        for gw in (one, two):
            await wait_until(partial(lambda gw: gone not in gw.fleet.names, gw), timeout=30,
                             what=f"both replicas dropped {gone}")
        # It moves to one node, the same on both replicas, and reuses its cache there.
        await first.turn(two)
        await first.turn(one)
        moved = first.nodes[-1]
        assert moved != gone and first.nodes[-2] == moved, first.nodes
        assert first.reused(len(first.nodes) - 1), (first.prompt_tokens, first.cached_tokens)
        for conversation in others:
            await conversation.turn(one)
            await conversation.turn(two)
            before = homes[id(conversation)]
            after = conversation.nodes[-2:]
            assert after[0] == after[1] != gone, conversation.nodes
            if before != gone:  # only the conversations of the node that left move
                assert after[0] == before, conversation.nodes
