"""examples/embed_router.py and examples/clients/ run as documented."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx
import msgspec
import pytest

from cortex.config import GatewayConfig, ModelProfile

from ..conftest import NeuronProcess
from ..gateway_support import GEMMA, running_gateway, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GiB = 2**30


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- embed_router.py ---------------------------------------------------------------------------

def test_router_is_driven_from_python() -> None:
    embed = load_example("embed_router")
    fleet = embed.sample_fleet()
    serve = embed.decide(fleet, "llama-8b", {})
    assert (serve.action, serve.node, serve.reason) == ("serve", "gpu-a",
                                                        "ready with a free slot")
    load = embed.decide(fleet, "mistral-24b", {"gpu-a": 20 * GiB, "gpu-b": 20 * GiB})
    assert (load.action, load.node, load.victims) == ("load", "gpu-b", ("qwen-7b",))
    verdicts = {v.node: v.verdict for v in load.candidates}
    assert "too little is evictable" in verdicts["gpu-a"]  # busy llama-8b cannot go
    # The pinned embedder is never a victim, whatever the policy.
    priority = embed.decide(fleet, "mistral-24b", {"gpu-b": 24 * GiB}, eviction="priority")
    assert priority.action == "none"


def test_decide_command_prints_decisions() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "embed_router.py"), "decide"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["action"], d["node"]) for d in decisions] == [("serve", "gpu-a"),
                                                             ("load", "gpu-b")]


@pytest.mark.anyio
async def test_gateway_mounted_under_a_prefix(start_neuron: Callable[..., NeuronProcess]
                                              ) -> None:
    neuron = start_neuron({"name": "n1", "memory_budget": "2GiB"})
    config = msgspec.convert({"gateway": {"poll_interval": 0.25},
                              "neurons": [{"name": "n1", "endpoint": neuron.url}]},
                             GatewayConfig)
    profiles = [ModelProfile(id="gemma", source=GEMMA, chat_format="gemma", n_ctx=512)]
    app = load_example("embed_router").build_app(config, profiles)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:

        async def neuron_up() -> bool:
            return bool((await client.get("/llm/health")).json()["nodes_up"] == 1)

        await wait_until(neuron_up, timeout=30, what="the mounted gateway polls the neuron")
        assert (await client.get("/")).json() == {"service": "my-app", "llm_nodes_up": 1}
        models = (await client.get("/llm/v1/models")).json()["data"]
        assert [(m["id"], m["state"]) for m in models] == [("gemma", "available")]
        fleet = (await client.get("/llm/admin/fleet")).json()
        assert [(n["name"], n["up"]) for n in fleet["nodes"]] == [("n1", True)]
        missing = await client.post("/llm/v1/chat/completions", json={
            "model": "nope", "messages": [{"role": "user", "content": "hi"}]})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        assert (await client.get("/v1/models")).status_code == 404  # only under the prefix


# --- clients/ --------------------------------------------------------------------------------

async def run_client(*command: str, url: str) -> str:
    """Run a client example against `url` without blocking the loop serving the gateway."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "CORTEX_URL": url, "MODEL": "gemma-3-270m"})
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


@pytest.mark.model
@pytest.mark.anyio
async def test_client_examples_against_a_real_fleet(gemma_path: Path, cache_dir: Path,
                                                    tmp_path: Path) -> None:
    neuron = NeuronProcess({"name": "n1", "cache_dir": str(cache_dir)}, tmp_path)
    try:
        neuron.wait_ready()
        gemma = profile_of_bundled()
        async with running_gateway([("n1", neuron)], [gemma]) as gw:
            out = await run_client(sys.executable, "examples/clients/openai_sdk.py", url=gw.url)
            lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
            assert lines["models"] == "gemma3-270m"  # the alias MODEL resolved to the profile
            assert lines["reply"].strip() and lines["stream"].strip()
            assert int(lines["usage"].split()[0]) > 0

            if shutil.which("curl"):
                out = await run_client("sh", "examples/clients/curl.sh", url=gw.url)
                assert json.loads(out.split("# chat completion\n")[1].split("\n")[0])[
                    "object"] == "chat.completion"
                assert out.rstrip().endswith("data: [DONE]")

            if importlib.util.find_spec("anthropic") is not None:
                out = await run_client(sys.executable, "examples/clients/anthropic_sdk.py",
                                       url=gw.url)
                assert "reply: " in out and "stop: " in out and "stream: " in out
    finally:
        neuron.stop()


def profile_of_bundled() -> ModelProfile:
    """The bundled Gemma as the gateway's default profile has it, alias included."""
    from cortex.defaults import BUNDLED_GEMMA

    return msgspec.structs.replace(BUNDLED_GEMMA, n_ctx=2048)
