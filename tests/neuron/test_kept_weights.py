"""An unloaded llama.cpp model's weights are kept while the budget has room, so a model
swapped out and back in is not read from its file again; a load that needs the room
takes it back. On real neurons with the bundled Gemma, observed through /status
(`kept_bytes`) and the neuron's log, with greedy outputs compared across a reuse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import NeuronProcess, running_neuron

pytestmark = pytest.mark.model

GEMMA = {"id": "a", "source": "bundled:gemma3-270m", "chat_format": "gemma", "n_ctx": 256}
# The same file with another context: one kept copy of the weights serves both.
OTHER_CTX = {**GEMMA, "id": "b", "n_ctx": 512}
# The same file offloading another number of layers: weights of their own.
OTHER_LAYERS = {**GEMMA, "id": "c", "n_gpu_layers": 0}
KEPT_LOG = "weights kept from its last load"


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"cache_dir": str(cache_dir), "memory_budget": "16GiB"},
                        tmp_path_factory.mktemp("kept-roomy")) as neuron:
        yield neuron


def _client(neuron: NeuronProcess) -> httpx.Client:
    return httpx.Client(base_url=neuron.url, timeout=120)


def _load(client: httpx.Client, profile: dict[str, Any]) -> None:
    reply = client.post("/models/load", json={"profile": profile})
    assert reply.status_code == 200, reply.text
    assert reply.json()["state"] == "ready"


def _unload(client: httpx.Client, model: str) -> None:
    assert client.post("/models/unload", json={"model": model}).status_code == 200


def _status(client: httpx.Client) -> dict[str, Any]:
    reply = client.get("/status")
    assert reply.status_code == 200
    return dict(reply.json())


def _greedy(client: httpx.Client, model: str) -> str:
    reply = client.post("/v1/completions", json={
        "model": model, "prompt": "The capital of France is", "max_tokens": 12,
        "temperature": 0})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["text"])


def test_a_model_loaded_again_takes_its_kept_weights(roomy: NeuronProcess) -> None:
    with _client(roomy) as client:
        _load(client, GEMMA)
        before = _greedy(client, "a")
        assert _status(client)["kept_bytes"] == 0
        _unload(client, "a")
        status = _status(client)
        weights = status["kept_bytes"]
        # The weights (Gemma 3 270M Q4_K_M: 235 MiB), free to a gateway all the same.
        assert 200 * 2**20 < weights < 300 * 2**20
        assert status["free_bytes"] == status["budget_bytes"] and status["models"] == []

        _load(client, GEMMA)
        assert _status(client)["kept_bytes"] == 0  # taken, not read again
        assert roomy.log().count(KEPT_LOG) == 1
        assert _greedy(client, "a") == before

        # Another profile of the same file takes them too; unloading both keeps one copy.
        _unload(client, "a")
        _load(client, OTHER_CTX)
        assert _status(client)["kept_bytes"] == 0 and roomy.log().count(KEPT_LOG) == 2
        _load(client, GEMMA)
        _unload(client, "a")
        _unload(client, "b")
        assert _status(client)["kept_bytes"] == weights

        # Weights of another kind (other layers offloaded) are not taken; with room,
        # the kept ones stay.
        _load(client, OTHER_LAYERS)
        assert _status(client)["kept_bytes"] == weights
        assert roomy.log().count(KEPT_LOG) == 2
        _unload(client, "c")
        assert _status(client)["kept_bytes"] == 2 * weights
        _load(client, GEMMA)
        _unload(client, "a")


def test_a_load_that_needs_the_room_takes_the_kept_weights_back(
        roomy: NeuronProcess, tmp_path: Path, cache_dir: Path) -> None:
    with _client(roomy) as client:
        estimate = client.post("/models/estimate", json={"profile": GEMMA})
        assert estimate.status_code == 200, estimate.text
        total, weights = estimate.json()["total"], estimate.json()["weights"]
    # Room for one model, not for one model and another's kept weights.
    budget = total + weights // 2
    with running_neuron({"cache_dir": str(cache_dir), "memory_budget": str(budget)},
                        tmp_path) as tight, _client(tight) as client:
        _load(client, GEMMA)
        _unload(client, "a")
        kept = _status(client)["kept_bytes"]
        assert kept > weights // 2
        _load(client, OTHER_LAYERS)  # needs the room: a's weights go
        status = _status(client)
        assert status["kept_bytes"] == 0 and [m["id"] for m in status["models"]] == ["c"]
        _unload(client, "c")
        assert _status(client)["kept_bytes"] == kept
        _load(client, GEMMA)  # c's weights go; a's own were freed before
        assert _status(client)["kept_bytes"] == 0 and tight.log().count(KEPT_LOG) == 0
        assert _greedy(client, "a")
