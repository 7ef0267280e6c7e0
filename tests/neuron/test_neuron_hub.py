"""Loading from a HuggingFace repo through a local hub: a pre-populated cache, offline.

The real huggingface_hub client resolves the quant pattern and the base repo's
chat template; only the network is absent (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from ..conftest import NeuronProcess

pytestmark = pytest.mark.model

COMMIT = "c" * 40
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }} MARKER\n"
            "{{ m.content }}<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def snapshot(cache: Path, repo: str, files: dict[str, Path | bytes]) -> None:
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            (snap / name).symlink_to(content)
        else:
            (snap / name).write_bytes(content)


def test_load_quant_pattern_from_local_hub_with_base_repo_template(
        start_neuron: type[NeuronProcess], gemma_path: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    snapshot(hub, "acme/gemma-3-270m-GGUF", {
        "gemma-3-270m-Q4_K_M.gguf": gemma_path,
        "gemma-3-270m-Q8_0.gguf": b"not used",
        "README.md": b"# GGUF"})
    snapshot(hub, "acme/gemma-3-270m", {
        "tokenizer_config.json": json.dumps({"chat_template": TEMPLATE}).encode()})
    neuron = start_neuron({"cache_dir": str(tmp_path / "cache")},
                          env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
                               "HF_ENDPOINT": "http://127.0.0.1:9"})
    with httpx.Client(base_url=neuron.url, timeout=120) as client:
        loaded = client.post("/models/load", json={"profile": {
            "id": "hub-gemma", "source": "hf://acme/gemma-3-270m-GGUF:q4_k_m", "n_ctx": 512}})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["chat"] is True
        messages = [{"role": "user", "content": "hello"}]
        counted = client.post("/tokenize", json={"model": "hub-gemma", "messages": messages,
                                                 "return_tokens": True}).json()
        rendered = "<start_of_turn>user MARKER\nhello<end_of_turn>\n<start_of_turn>model\n"
        expected = client.post("/tokenize", json={"model": "hub-gemma", "text": rendered,
                                                  "return_tokens": True}).json()
        assert counted["tokens"] == expected["tokens"]
        reply = client.post("/v1/chat/completions", json={
            "model": "hub-gemma", "messages": messages, "max_tokens": 3})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1

        missing = client.post("/models/load", json={"profile": {
            "id": "nope", "source": "hf://acme/gemma-3-270m-GGUF:Q2_K"}})
        assert missing.status_code == 404
        message = missing.json()["error"]["message"]
        assert "acme/gemma-3-270m-GGUF" in message and "Q2_K" in message
        assert "gemma-3-270m-Q4_K_M.gguf" in message


def test_over_budget_load_is_refused_with_numbers(start_neuron: type[NeuronProcess],
                                                  gemma_path: Path) -> None:
    neuron = start_neuron({"memory_budget": "900MiB", "model_dirs": [str(gemma_path.parent)]})
    with httpx.Client(base_url=neuron.url, timeout=60) as client:
        big = client.post("/models/load", json={"profile": {
            "id": "big", "source": gemma_path.name, "n_ctx": 8192, "slots": 4}})
        assert big.status_code == 507
        message = big.json()["error"]["message"]
        assert "model `big` needs 1.62 GiB (weights 0.24 GiB" in message
        assert "KV cache 0.56 GiB" in message and "compute 0.58 GiB" in message
        assert "0.88 GiB free of its 0.88 GiB budget" in message
        assert client.get("/status").json()["reserved_bytes"] == 0
        small = client.post("/models/load", json={"profile": {
            "id": "small", "source": gemma_path.name, "n_ctx": 256}})
        assert small.status_code == 200, small.text
        second = client.post("/models/load", json={"profile": {
            "id": "second", "source": gemma_path.name, "n_ctx": 256}})
        assert second.status_code == 507  # the first one's reservation counts
        status = client.get("/status").json()
        assert [m["id"] for m in status["models"]] == ["small"]
        assert status["reserved_bytes"] == small.json()["estimate"]["total"]
