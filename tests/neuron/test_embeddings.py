"""Embeddings on a real neuron (the bundled Gemma loaded with `embeddings = true`):
OpenAI's caps, base64 as the `openai` SDK asks for it, and work that ends when the
client leaves or the model is force-unloaded, instead of holding the model for minutes.

Gemma's embeddings are slow on CPU (llama.cpp computes its 262,144 logits for every
token of a pooled input): a few seconds an input here, so the large requests below would
run for many minutes if nothing stopped them.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy
import openai
import pytest

from ..conftest import NeuronProcess

pytestmark = pytest.mark.model

PROFILE = {"id": "emb", "source": "bundled:gemma3-270m", "embeddings": True, "n_ctx": 512}
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "
LONG_INPUT = SENTENCE * 10  # about 140 tokens
BIG = [LONG_INPUT] * 2000  # about 280,000 tokens: under every cap, and hours of work here


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    process = NeuronProcess({"cache_dir": str(cache_dir), "name": "emb"},
                            tmp_path_factory.mktemp("embeddings"))
    try:
        process.wait_ready()
        _load(process)
        yield process
    finally:
        process.stop()


def _load(neuron: NeuronProcess) -> None:
    reply = httpx.post(f"{neuron.url}/models/load", json={"profile": PROFILE}, timeout=120)
    assert reply.status_code == 200, reply.text


def _model(neuron: NeuronProcess) -> dict[str, Any] | None:
    models = httpx.get(f"{neuron.url}/models", timeout=10).json()["models"]
    return next((m for m in models if m["id"] == "emb"), None)


def _embedded(neuron: NeuronProcess) -> float:
    """Tokens the model has embedded so far (the neuron's prefill counter)."""
    text = httpx.get(f"{neuron.url}/metrics", timeout=10).text
    found = re.search(r'^cortex_neuron_prefill_tokens_total\{[^}]*model="emb"[^}]*\} (\S+)$',
                      text, re.M)
    return float(found.group(1)) if found else 0.0


def _wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting until {what}"
        time.sleep(0.1)


def test_base64_decodes_to_the_same_floats(neuron: NeuronProcess) -> None:
    sdk = openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="k", max_retries=0, timeout=120)
    words = ["hello", "a longer sentence about rivers"]
    floats = sdk.embeddings.create(model="emb", input=words, encoding_format="float")
    # Given no encoding_format, the SDK asks for base64 and decodes it itself.
    decoded = sdk.embeddings.create(model="emb", input=words)
    raw = httpx.post(f"{neuron.url}/v1/embeddings", timeout=120, json={
        "model": "emb", "input": words, "encoding_format": "base64"}).json()
    for i, item in enumerate(raw["data"]):
        assert isinstance(item["embedding"], str)
        packed = base64.b64decode(item["embedding"])
        little = list(struct.unpack(f"<{len(packed) // 4}f", packed))
        as_f32 = numpy.asarray(floats.data[i].embedding, dtype="<f4").tolist()
        assert little == as_f32 == decoded.data[i].embedding
        assert len(little) == 640
    short = sdk.embeddings.create(model="emb", input="hello", dimensions=64,
                                  encoding_format="float").data[0].embedding
    assert len(short) == 64 and abs(sum(x * x for x in short) - 1) < 1e-6
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="emb", input="hello", dimensions=641)
    assert refused.value.param == "dimensions"


def test_each_cap_answers_400(neuron: NeuronProcess) -> None:
    sdk = openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="k", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError, match="2049 inputs; give at most 2048"):
        sdk.embeddings.create(model="emb", input=["x"] * 2049)
    sdk.embeddings.create(model="emb", input=["x"] * 3)
    with pytest.raises(openai.BadRequestError, match="more than 300000 tokens in all") as total:
        sdk.embeddings.create(model="emb", input=[SENTENCE * 36] * 600)  # 500 x 600 tokens
    assert total.value.param == "input"
    with pytest.raises(openai.BadRequestError) as over:
        sdk.embeddings.create(model="emb", input=["fine", SENTENCE * 2000])
    assert over.value.code == "context_length_exceeded" and over.value.param == "input"


def test_the_per_input_cap_holds_for_long_contexts(gemma_path: Path) -> None:
    """8,192 tokens an input matters only past n_ctx 8192, whose pooled batch would need
    an 8 GiB compute buffer here: the Embedder is given that n_ctx and the real tokenizer,
    and the cap is met before anything is decoded (no context is used)."""
    import asyncio

    import llama_cpp
    from llama_cpp._internals import LlamaModel

    from cortex.errors import InvalidRequest
    from cortex_plugins.llamacpp.embed import Embedder

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(gemma_path), params=params, verbose=False)

    async def never(fn: Any) -> list[float]:
        raise AssertionError("nothing is decoded past a cap")

    embedder = Embedder(model=model, ctx=None, n_ctx=32768, on_thread=never,
                        tokens=lambda text: model.tokenize(text.encode(), True, True),
                        cut=lambda text, limit: [])
    with pytest.raises(InvalidRequest, match=r"input\[1\] has \d+ tokens; at most 8192"):
        asyncio.run(embedder.embed(["fine", SENTENCE * 700]))
    model.close()


def test_truncation_keeps_the_specials_around_the_text() -> None:
    """A tokenizer that puts BOS before a text and SEP after it (BERT-style embedding
    models, some of which pool the last token): the text's own tokens are cut, the
    specials kept. One that adds only BOS, or nothing, is cut at the end."""
    from cortex_plugins.llamacpp.embed import cut_tokens

    text = list(range(10, 30))
    around = [1, *text, 2]
    assert cut_tokens(lambda special: around if special else text, 8) == [
        1, 10, 11, 12, 13, 14, 15, 2]
    assert cut_tokens(lambda special: around if special else text, 22) == around
    assert cut_tokens(lambda special: [1, *text] if special else text, 5) == [
        1, 10, 11, 12, 13]
    assert cut_tokens(lambda special: text, 3) == [10, 11, 12]


def test_truncate_cuts_an_input_to_the_per_input_cap(gemma_path: Path) -> None:
    """With truncate, an input over the 8,192-token cap is cut to it at its end (BOS
    kept) instead of refused; the real tokenizer, no context (as the test above)."""
    import asyncio

    import llama_cpp
    from llama_cpp._internals import LlamaModel

    from cortex_plugins.llamacpp.embed import Embedder, cut_tokens

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(gemma_path), params=params, verbose=False)
    decoded: list[list[int]] = []

    async def record(fn: Any) -> list[float]:
        decoded.append(fn.args[0])  # functools.partial(_embed_one, tokens)
        return [1.0]

    text = SENTENCE * 700
    embedder = Embedder(
        model=model, ctx=None, n_ctx=32768, on_thread=record,
        tokens=lambda text: model.tokenize(text.encode(), True, True),
        cut=lambda text, limit: cut_tokens(
            lambda special: model.tokenize(text.encode(), special, True), limit))
    vectors, count = asyncio.run(embedder.embed(["fine", text], truncate=True))
    whole = model.tokenize(text.encode(), True, True)
    assert len(whole) > 8192 and len(vectors) == 2
    assert decoded[1] == whole[:8192] and count == len(decoded[0]) + 8192
    model.close()


def test_truncate_cuts_an_input_over_the_context_at_its_end(neuron: NeuronProcess) -> None:
    """Two inputs over the 512-token context that differ only past it embed the same,
    to n_ctx - 1 tokens each; a short one is untouched. `truncate` is cortex's extension
    (what the Ollama dialect asks for), so the SDK sends it as an extra field."""
    sdk = openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="k", max_retries=0, timeout=300)
    inputs = [SENTENCE * 100, SENTENCE * 60 + "And then it rained for a week.", "hello"]
    reply = sdk.embeddings.create(model="emb", input=inputs, encoding_format="float",
                                  extra_body={"truncate": True})
    first, second, short = (item.embedding for item in reply.data)
    assert first == second and first != short
    alone = sdk.embeddings.create(model="emb", input="hello", encoding_format="float")
    assert reply.usage.prompt_tokens == 2 * 511 + alone.usage.prompt_tokens
    assert short == alone.data[0].embedding


class _Abandoned:
    """A large embeddings request on a raw socket, so the test can hang up mid-work."""

    def __init__(self, neuron: NeuronProcess) -> None:
        body = msgspec.json.encode({"model": "emb", "input": BIG})
        self.sock = socket.create_connection(("127.0.0.1", neuron.port))
        self.sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n"
                          b"content-type: application/json\r\n"
                          + f"content-length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_leaves_stops_the_work(neuron: NeuronProcess) -> None:
    before = _embedded(neuron)
    request = _Abandoned(neuron)
    try:
        _wait(lambda: _embedded(neuron) > before, "the first inputs are embedded", 120)
        assert (_model(neuron) or {})["in_flight"] == 1
    finally:
        request.close()
    _wait(lambda: (_model(neuron) or {}).get("in_flight") == 0,
          "the embedding loop ends", 60)
    stopped_at = _embedded(neuron)
    assert stopped_at - before < 0.5 * len(BIG) * 140  # far from done: it stopped early
    started = time.monotonic()
    reply = httpx.post(f"{neuron.url}/v1/embeddings", timeout=60,
                       json={"model": "emb", "input": "next"})
    assert reply.status_code == 200
    assert time.monotonic() - started < 60
    assert _embedded(neuron) - stopped_at < 10  # only the follow-up's own tokens


def test_a_forced_unload_ends_a_large_embedding(neuron: NeuronProcess) -> None:
    answers: list[httpx.Response] = []

    def big() -> None:
        answers.append(httpx.post(f"{neuron.url}/v1/embeddings", timeout=600,
                                  json={"model": "emb", "input": BIG}))

    before = _embedded(neuron)
    worker = threading.Thread(target=big, daemon=True)
    worker.start()
    try:
        _wait(lambda: _embedded(neuron) > before, "the first inputs are embedded", 120)
        unload = httpx.post(f"{neuron.url}/models/unload", timeout=60,
                            json={"model": "emb", "force": True})
        assert unload.status_code == 200, unload.text
        worker.join(60)
        assert not worker.is_alive()
        assert answers[0].status_code == 503
        assert "unloaded" in answers[0].json()["error"]["message"]
        assert _model(neuron) is None
    finally:
        worker.join(120)
        if _model(neuron) is None:
            _load(neuron)
