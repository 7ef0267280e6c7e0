"""Two conversations sharing a long system prompt on one two-slot model, with the real
bundled Gemma: the second forks the first's cache (llama.cpp copies the slot's stream)
instead of overwriting it, its greedy reply is the one a fresh prefill gives, and the
first conversation's next turn still finds all of its own turns cached.

Before, the second conversation took the first's slot (the longest common prefix), so
the first's next turn decoded everything past the system prompt again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import NeuronProcess, running_neuron

pytestmark = pytest.mark.model

PROFILE = {"id": "fork", "source": "bundled:gemma3-270m", "chat_format": "gemma",
           "n_ctx": 2048, "slots": 2}
# About 700 tokens shared (more than FORK_COST), then each conversation's own text: X's
# is long (losing it costs more than a copy), Y's short.
SYSTEM = "".join(f"Rule {i}: answer politely, cite the manual section {i}, and keep it "
                 f"short. " for i in range(40))
X = SYSTEM + "".join(f"Line {i} of the ship's log: the wind was steady from the west. "
                     for i in range(30))
Y = SYSTEM + "Question: what is the first rule?"


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"cache_dir": str(cache_dir), "memory_budget": "16GiB"},
                        tmp_path_factory.mktemp("fork")) as process:
        yield process


def _load(client: httpx.Client) -> None:
    reply = client.post("/models/load", json={"profile": PROFILE})
    assert reply.status_code == 200, reply.text


def _complete(client: httpx.Client, prompt: str) -> dict[str, Any]:
    reply = client.post("/v1/completions", json={
        "model": "fork", "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _cached(reply: dict[str, Any]) -> int:
    return int(reply["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_a_shared_prefix_is_forked_and_both_conversations_keep_their_cache(
        neuron: NeuronProcess) -> None:
    with httpx.Client(base_url=neuron.url, timeout=300) as client:
        # The reference: Y prefilled whole, in a fresh context.
        _load(client)
        fresh = _complete(client, Y)
        assert _cached(fresh) == 0
        assert client.post("/models/unload", json={"model": "fork"}).status_code == 200

        _load(client)
        x1 = _complete(client, X)
        assert _cached(x1) == 0
        shared = client.post("/tokenize", json={"model": "fork", "text": SYSTEM}).json()["count"]
        assert shared > 256
        y1 = _complete(client, Y)
        # Y started from X's cache, cut to the shared prefix (a token or two at the
        # seam may differ) ...
        assert shared - 2 <= _cached(y1) <= shared
        # ... and replies exactly as when prefilled whole.
        assert y1["choices"][0]["text"] == fresh["choices"][0]["text"]
        # X's own turns are still cached: its next turn decodes only what is new.
        x2 = _complete(client, X + x1["choices"][0]["text"] + " Line 30 of the log:")
        assert _cached(x2) >= x1["usage"]["prompt_tokens"]
        assert client.post("/models/unload", json={"model": "fork"}).status_code == 200
