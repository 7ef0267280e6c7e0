"""Serving outside `cortex serve`: the ASGI factories, the event loop choice, and what a
gateway process imports (a gateway must not carry the neuron's numpy or llama_cpp)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvloop

from cortex.gateway.asgi import gateway
from cortex.loops import run
from cortex_neuron.asgi import neuron


def test_the_gateway_factory_needs_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORTEX_CONFIG", raising=False)
    with pytest.raises(RuntimeError, match="CORTEX_CONFIG"):
        gateway()


@pytest.mark.anyio
async def test_the_factories_build_working_apps(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cortex.toml"
    config.write_text('[[neurons]]\nname = "a"\nendpoint = "http://127.0.0.1:9"\n')
    monkeypatch.setenv("CORTEX_CONFIG", str(config))
    monkeypatch.delenv("NEURON_CONFIG", raising=False)
    for app in (gateway(), neuron()):
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("loop, kind", [("asyncio", asyncio.BaseEventLoop),
                                        ("uvloop", uvloop.Loop), ("auto", uvloop.Loop)])
def test_run_uses_the_loop_asked_for(loop: str, kind: type) -> None:
    seen: list[object] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run(main(), loop)
    assert isinstance(seen[0], kind)
    assert loop == "asyncio" or not isinstance(seen[0], asyncio.BaseEventLoop)


def test_a_gateway_process_does_not_import_the_neurons_heavy_parts() -> None:
    code = ("import sys; from cortex.plugins import build_plugin_manager; "
            "build_plugin_manager(); import cortex.gateway, cortex.gateway.server; "
            "print(sorted(m for m in ('numpy', 'llama_cpp', 'huggingface_hub') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
