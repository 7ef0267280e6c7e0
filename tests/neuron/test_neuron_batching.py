"""Continuous batching on one model: concurrent streams share one llama.cpp context."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import NeuronProcess

pytestmark = pytest.mark.model

PROMPTS = ["The capital of France is", "Water boils at", "The largest planet is",
           "My favourite food is", "In 1969, humans", "The quick brown fox",
           "Python is a programming language that", "Once upon a time"]


ONE = {"id": "one", "source": "bundled:gemma3-270m", "chat_format": "gemma", "n_ctx": 512,
       "slots": 1}
EIGHT = {**ONE, "id": "eight", "slots": 8}


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    tmp = tmp_path_factory.mktemp("batching")
    process = NeuronProcess({"cache_dir": str(cache_dir), "preload": [
        ONE,
        EIGHT,
        {"id": "two", "source": "bundled:gemma3-270m", "chat_format": "gemma", "n_ctx": 512,
         "slots": 2}]}, tmp)
    process.wait_ready()
    with httpx.Client(base_url=process.url, timeout=60) as client:
        deadline = time.monotonic() + 60
        while not _all_ready(client):
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
    yield process
    process.stop()


def _all_ready(client: httpx.Client) -> bool:
    models = client.get("/models").json()["models"]
    return len(models) == 3 and all(m["state"] == "ready" for m in models)


def _complete(url: str, model: str, prompt: str, n: int = 24, **extra: Any) -> dict[str, Any]:
    reply = httpx.post(f"{url}/v1/completions", timeout=120, json={
        "model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, **extra})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _fresh(neuron: NeuronProcess, profile: dict[str, Any]) -> None:
    """The model loaded again: every slot empty (its weights were kept: a new context)."""
    httpx.post(f"{neuron.url}/models/unload", json={"model": profile["id"]}, timeout=60)
    loaded = httpx.post(f"{neuron.url}/models/load", json={"profile": profile}, timeout=120)
    assert loaded.status_code == 200, loaded.text


def test_a_many_slot_context_decodes_like_a_single_slot_one(neuron: NeuronProcess) -> None:
    """Each prompt on a fresh single-slot context, and each in an empty slot of the
    eight (the slot choice takes an empty slot before another prompt's cache): the same
    prefill both sides, so greedy replies must match. (Reusing even a cached BOS splits
    the prefill differently, and float rounding may then flip a greedy token.)"""
    alone = []
    for prompt in PROMPTS:
        _fresh(neuron, ONE)
        reply = _complete(neuron.url, "one", prompt)
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        alone.append(reply["choices"][0]["text"])
    _fresh(neuron, EIGHT)
    in_slots = []
    for prompt in PROMPTS:
        reply = _complete(neuron.url, "eight", prompt)
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        in_slots.append(reply["choices"][0]["text"])
    assert in_slots == alone


def test_greedy_tokens_match_between_one_and_eight_concurrent(neuron: NeuronProcess) -> None:
    # llama.cpp's CPU matrix kernels switch blocking from 4 rows a batch on, so logits
    # differ in the last bits from a lone request's and a greedy near-tie can flip a
    # later token (docs/neuron.md). Counting prompts have no near-ties: eight of them
    # decoded together must give exactly the lone tokens, and each must go on with its
    # own count, which any cross-talk between slots or wrong position would break.
    counts = [f"{a}, {a + 1}, {a + 2}, {a + 3}, {a + 4}," for a in range(1, 80, 10)]
    alone = [_complete(neuron.url, "one", p, 9)["choices"][0]["text"] for p in counts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: _complete(neuron.url, "eight", p, 9), counts))
    assert [r["choices"][0]["text"] for r in together] == alone
    for start, text in zip(range(1, 80, 10), alone, strict=True):
        assert text.startswith(f" {start + 5}, {start + 6},"), text


def _in_flight(url: str, model: str) -> int:
    return int(next(m for m in httpx.get(f"{url}/models").json()["models"]
                    if m["id"] == model)["in_flight"])


def test_eight_streams_are_decoded_at_once(neuron: NeuronProcess) -> None:
    # Each stream holds on after its first token until all eight have one, so they are
    # all in their slots when the neuron is asked (no sampling of a brief overlap).
    begun = threading.Barrier(9)
    release = threading.Event()

    def stream(prompt: str) -> None:
        with httpx.Client(base_url=neuron.url, timeout=120) as client, client.stream(
                "POST", "/v1/completions", json={"model": "eight", "prompt": prompt,
                                                 "max_tokens": 400, "stream": True}) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    begun.wait(60)
                    release.wait(60)
                    return  # leaving closes the stream, which frees the slot

    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(stream, p) for p in PROMPTS]
        try:
            begun.wait(60)
            assert _in_flight(neuron.url, "eight") == 8
        finally:
            release.set()
        for s in streams:
            s.result()


def test_requests_beyond_the_slots_queue_in_order_and_all_finish(
        neuron: NeuronProcess) -> None:
    seen_queued = seen_in_flight = 0
    done = threading.Event()

    def watch() -> None:  # asserts stay in the test's thread, where they count
        nonlocal seen_queued, seen_in_flight
        with httpx.Client(base_url=neuron.url) as client:
            while not done.is_set():
                for m in client.get("/models").json()["models"]:
                    if m["id"] == "two":
                        seen_in_flight = max(seen_in_flight, m["in_flight"])
                        seen_queued = max(seen_queued, m["queued"])
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda p: _complete(neuron.url, "two", p, 32), PROMPTS[:5]))
    done.set()
    watcher.join()
    assert all(r["usage"]["completion_tokens"] == 32 for r in results)
    assert seen_queued >= 1
    assert seen_in_flight <= 2


def test_multi_turn_chat_reuses_the_cached_prefix(neuron: NeuronProcess) -> None:
    history = [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]
    first = httpx.post(f"{neuron.url}/v1/chat/completions", timeout=60, json={
        "model": "two", "messages": history, "max_tokens": 16, "temperature": 0}).json()
    history += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                {"role": "user", "content": "And then?"}]
    second = httpx.post(f"{neuron.url}/v1/chat/completions", timeout=60, json={
        "model": "two", "messages": history, "max_tokens": 8, "temperature": 0}).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # Everything up to the first turn's prompt is reused; only the new turn is prefilled.
    assert cached >= first["usage"]["prompt_tokens"]
    assert cached < second["usage"]["prompt_tokens"]


def test_tokenize_answers_while_streams_run(neuron: NeuronProcess) -> None:
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(_complete, neuron.url, "eight", p, 96) for p in PROMPTS[:2]]
        deadline = time.monotonic() + 30
        while _in_flight(neuron.url, "eight") < 2:  # both in their slots, generating
            assert time.monotonic() < deadline and not any(s.done() for s in streams)
            time.sleep(0.02)
        count = httpx.post(f"{neuron.url}/tokenize", json={"model": "eight",
                                                           "text": "hello"}).json()["count"]
        assert count >= 1
        assert not all(s.done() for s in streams)  # it did not wait for them to finish
        for s in streams:
            s.result()


def test_a_cancelled_stream_frees_its_slot(neuron: NeuronProcess) -> None:
    with httpx.Client(base_url=neuron.url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={
                "model": "one", "prompt": "Count:", "max_tokens": 400,
                "stream": True}) as reply:
            for n, _ in enumerate(reply.iter_lines()):
                if n == 6:
                    break
        deadline = time.monotonic() + 5
        while True:
            model = next(m for m in client.get("/models").json()["models"] if m["id"] == "one")
            if model["in_flight"] == 0:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _complete(neuron.url, "one", "Hi", 2)["usage"]["completion_tokens"] == 2
