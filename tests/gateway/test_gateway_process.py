"""`cortex serve` as a real process: the embedded one-line default, and config reload
(SIGHUP and `cortex reload`) adding and removing nodes under a live stream."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ..conftest import ROOT, NeuronProcess, free_port
from ..gateway_support import GEMMA, neuron_fleet
from ..serve_support import GatewayProcess, nodes_up

pytestmark = pytest.mark.model


def test_embedded_default_ends_with_a_working_openai_endpoint(
        tmp_path: Path, cache_dir: Path, gemma_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "cortex").symlink_to(cache_dir)  # reuse the assembled model
    gateway = GatewayProcess(tmp_path, ["--neuron-listen", f"127.0.0.1:{free_port()}"],
                             env={"HOME": str(home)})
    try:
        gateway.wait(nodes_up(1), "the embedded neuron comes up", 60)
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert ids == ["gemma3-270m"]
            reply = client.post("/v1/chat/completions", json={
                "model": "gemma3-270m", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Say hi"}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["role"] == "assistant"
        # hypercorn's lines go through our log handler, once each.
        assert gateway.log().count(f"Running on http://127.0.0.1:{gateway.port}") == 1, \
            gateway.log()
    finally:
        assert gateway.stop() == 0, gateway.log()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
         cache_dir: Path) -> Iterator[dict[str, NeuronProcess]]:
    with neuron_fleet(tmp_path_factory.mktemp("gateway-process"), cache_dir,
                      ("one", "two")) as started:
        yield started


def write_config(where: Path, neurons: dict[str, NeuronProcess]) -> None:
    (where / "cortex.toml").write_bytes(msgspec.toml.encode({
        "models": "models.toml",
        "gateway": {"poll_interval": 0.25, "keepalive_interval": 0.2},
        "neurons": [{"name": name, "endpoint": n.url} for name, n in neurons.items()]}))
    models: list[dict[str, Any]] = [
        {"id": f"m-{name}", "source": GEMMA, "chat_format": "gemma", "n_ctx": 1024,
         "neurons": [name]} for name in neurons]
    (where / "models.toml").write_bytes(msgspec.toml.encode({"models": models}))


def test_sighup_adds_a_node_and_cortex_reload_removes_it_without_dropping_a_stream(
        tmp_path: Path, pair: dict[str, NeuronProcess]) -> None:
    write_config(tmp_path, {"one": pair["one"]})
    gateway = GatewayProcess(tmp_path, ["--config", str(tmp_path / "cortex.toml")])
    try:
        gateway.wait(nodes_up(1), "the gateway sees neuron one", 30)
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            assert client.post("/admin/models/m-one/load").status_code == 200
            lines: list[str] = []
            first = threading.Event()

            def stream() -> None:
                with client.stream("POST", "/v1/completions", json={
                        "model": "m-one", "prompt": "Once upon a time", "max_tokens": 40,
                        "stream": True}) as reply:
                    for line in reply.iter_lines():
                        if line:
                            lines.append(line)
                            first.set()

            reader = threading.Thread(target=stream)
            reader.start()
            assert first.wait(30)
            write_config(tmp_path, pair)
            gateway.proc.send_signal(signal.SIGHUP)
            gateway.wait(nodes_up(2), "SIGHUP adds neuron two", 30)
            reader.join(120)
            assert not reader.is_alive()
            assert lines[-1] == "data: [DONE]"  # the stream in flight was not dropped
            assert not any('"error"' in line for line in lines)

            ids = {m["id"] for m in client.get("/v1/models").json()["data"]}
            assert ids == {"m-one", "m-two"}
            reply = client.post("/v1/completions", json={"model": "m-two", "prompt": "Hi",
                                                         "max_tokens": 2})
            assert reply.status_code == 200, reply.text
            two = httpx.get(f"{pair['two'].url}/models").json()["models"]
            assert [m["id"] for m in two] == ["m-two"]

            write_config(tmp_path, {"one": pair["one"]})
            out = subprocess.run(
                [sys.executable, "-m", "cortex.cli", "reload", "--url", gateway.url],
                capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "1 neurons, 1 models" in out.stdout
            fleet = client.get("/admin/fleet").json()
            assert [n["name"] for n in fleet["nodes"]] == ["one"]

            (tmp_path / "models.toml").write_text("[[models]]\nid = 1\n")
            broken = client.post("/admin/reload")
            assert broken.status_code == 400
            assert "models.toml" in json.loads(broken.text)["error"]["message"]
            assert client.get("/health").json()["nodes_up"] == 1  # old config kept
    finally:
        assert gateway.stop() == 0, gateway.log()
