"""An embeddings request for a model whose profile does not serve embeddings is refused
at once: the gateway does not cold-load the model (evicting another) only for its
neuron to refuse. The client is the official `openai` SDK; the neuron is synthetic
(what is tested is placement, not the vectors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess, running_neuron
from ..gateway_support import complete, neuron_models, running_gateway

pytestmark = [pytest.mark.anyio]


def synthetic(model_id: str, **fields: bool) -> ModelProfile:
    return ModelProfile(id=model_id, harness="synthetic",
                        source="synthetic:rate=0,tokens=2,bytes=2GiB", **fields)


# Room for one of them on a 3 GiB node.
PROFILES = [synthetic("resident"), synthetic("chat-only"), synthetic("embedder", embeddings=True)]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"name": "n", "memory_budget": "3GiB"}, tmp_path) as neuron:
        yield neuron


async def test_embeddings_of_a_chat_model_are_refused_without_loading_it(
        node: NeuronProcess) -> None:
    async with running_gateway([("n", node)], PROFILES) as gw, \
            openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0) as sdk:
        assert (await complete(gw.client, "resident")).status_code == 200
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.embeddings.create(model="chat-only", input="hello")
        assert refused.value.code == "unsupported"
        assert "embeddings = true" in refused.value.message
        assert set(await neuron_models(node)) == {"resident"}  # nothing loaded, nor evicted
        assert gw.recorder.kinds("evicted") == []
        # A profile that serves embeddings is loaded for them, evicting as it must.
        vectors = await sdk.embeddings.create(model="embedder", input="hello")
        assert len(vectors.data) == 1 and vectors.data[0].embedding
        assert set(await neuron_models(node)) == {"embedder"}
