"""A changed profile reaches a loaded model (docs/gateway.md: changed profiles apply to
the next request): POST /models/load with the same id and a different profile changes
a template in place and reloads for anything else, on a real neuron."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import NeuronProcess

GEMMA = {"id": "t", "source": "bundled:gemma3-270m", "chat_format": "gemma", "n_ctx": 256}
# Gemma's markers with a word of our own in front, so the change shows in token counts.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\nSAID: "
            "{{ m.content }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[NeuronProcess]:
    process = NeuronProcess({"cache_dir": str(cache_dir), "memory_budget": "16GiB"},
                            tmp_path_factory.mktemp("neuron-change"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(neuron: NeuronProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=neuron.url, timeout=120) as c:
        yield c


def _load(client: httpx.Client, profile: dict[str, Any], wait: bool = True) -> dict[str, Any]:
    reply = client.post("/models/load", json={"profile": profile, "wait": wait})
    assert reply.status_code in (200, 202), reply.text
    return dict(reply.json())


def _count(client: httpx.Client, model: str) -> int:
    reply = client.post("/tokenize", json={"model": model, "messages": MESSAGES})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["count"])


@pytest.mark.model
def test_a_changed_template_applies_without_reloading(client: httpx.Client,
                                                      gemma_path: Path) -> None:
    first = _load(client, GEMMA)
    plain = _count(client, "t")
    changed = _load(client, {**GEMMA, "chat_format": None, "chat_template": TEMPLATE})
    # The same copy (its load took no second), now rendering with the new template.
    assert changed["load_seconds"] == first["load_seconds"]
    assert changed["profile_fingerprint"] != first["profile_fingerprint"]
    assert _count(client, "t") > plain
    reply = client.post("/v1/chat/completions", json={"model": "t", "messages": MESSAGES,
                                                      "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    # A template that does not parse is refused, and the copy keeps the one it had.
    broken = client.post("/models/load", json={"profile": {
        **GEMMA, "chat_format": None, "chat_template": "{% for %}"}})
    assert broken.status_code == 400 and "does not parse" in broken.json()["error"]["message"]
    assert _count(client, "t") > plain
    back = _load(client, GEMMA)
    assert back["profile_fingerprint"] == first["profile_fingerprint"]
    assert _count(client, "t") == plain
    # Fleet settings (aliases, pinning...) are the gateway's: no change at all.
    same = _load(client, {**GEMMA, "aliases": ["other-name"], "priority": 3})
    assert same["profile_fingerprint"] == first["profile_fingerprint"]
    assert same["load_seconds"] == first["load_seconds"]
    assert client.post("/models/unload", json={"model": "t"}).status_code == 200


@pytest.mark.model
def test_a_changed_context_reloads_the_model(client: httpx.Client, gemma_path: Path) -> None:
    first = _load(client, {**GEMMA, "id": "r"})
    bigger = _load(client, {**GEMMA, "id": "r", "n_ctx": 512, "slots": 2})
    assert bigger["state"] == "ready" and (bigger["n_ctx"], bigger["slots"]) == (512, 2)
    assert bigger["estimate"]["kv_cache"] == 4 * first["estimate"]["kv_cache"]
    assert bigger["load_seconds"] != first["load_seconds"]
    status = client.get("/status").json()
    assert [m["id"] for m in status["models"]].count("r") == 1
    # What the old copy reserved is freed with it.
    assert status["reserved_bytes"] == sum(m["estimate"]["total"] for m in status["models"])
    assert client.post("/v1/completions", json={"model": "r", "prompt": "Hi",
                                                "max_tokens": 2}).status_code == 200
    assert client.post("/models/unload", json={"model": "r"}).status_code == 200


def test_a_reload_lets_requests_in_flight_finish_and_holds_new_ones(
        client: httpx.Client, neuron: NeuronProcess) -> None:
    """The synthetic harness streams at a set rate, so a request is surely in flight."""
    profile = {"id": "s", "harness": "synthetic", "source": "synthetic:rate=10,tokens=40",
               "slots": 1}
    _load(client, profile)
    frames: list[Any] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{neuron.url}/v1/completions", timeout=60, json={
                "model": "s", "prompt": "x", "max_tokens": 40, "stream": True}) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert started.wait(30)
        reloading = _load(client, {**profile, "slots": 2}, wait=False)
        assert reloading["state"] == "loading" and reloading["slots"] == 2
        # A request arriving now waits for the new copy instead of failing.
        late = client.post("/v1/completions", json={"model": "s", "prompt": "y",
                                                    "max_tokens": 3})
        assert late.status_code == 200, late.text
    finally:
        reader.join(60)
    assert frames[-1] == "[DONE]"
    finish = json.loads(frames[-2])["choices"][0]
    assert finish["finish_reason"] == "length"  # all 40 tokens: nothing was cut short
    text = "".join(json.loads(f)["choices"][0]["text"] for f in frames[:-1])
    assert len(text.split()) == 40
    deadline = time.monotonic() + 30
    while (model := client.get("/status").json()["models"][-1])["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert model["id"] == "s" and model["slots"] == 2
    assert client.post("/models/unload", json={"model": "s"}).status_code == 200
