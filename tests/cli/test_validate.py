"""`cortex validate` against a real neuron (the bundled Gemma, and the synthetic harness for
slow loads and answers), plus `--version` and shell completion of both commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import cortex
from cortex.cli.validate import EXIT_CODES, default_id

from ..conftest import NeuronProcess, free_port
from ..gateway_support import reset

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[NeuronProcess]:
    tmp = tmp_path_factory.mktemp("validate")
    (tmp / "models").mkdir()
    process = NeuronProcess({"name": "v", "cache_dir": str(cache_dir),
                             "model_dirs": [str(tmp / "models")]}, tmp)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def empty(neuron: NeuronProcess) -> NeuronProcess:
    reset(neuron)
    return neuron


def validate(*args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cortex.cli", "validate", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def held(neuron: NeuronProcess) -> dict[str, str]:
    models = httpx.get(f"{neuron.url}/models", timeout=30).json()["models"]
    return {m["id"]: m["state"] for m in models}


@pytest.mark.model
def test_bundled_loads_answers_and_unloads(empty: NeuronProcess, gemma_path: Path) -> None:
    done = validate(empty.url, "bundled", "--n-ctx", "512", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"neuron {empty.url}: node v"
    assert lines[1].startswith("load: gemma3-270m from bundled:gemma3-270m ready in")
    assert lines[2].startswith("/v1/chat/completions: ")  # the profile's chat_format
    assert lines[-2:] == ["unload: done", f"ok: gemma3-270m loads and answers on {empty.url}"]
    assert held(empty) == {}

    report = validate(empty.url, "bundled:gemma3-270m", "--id", "plain", "--json",
                      "--max-tokens", "3", "--n-ctx", "512")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["ok"] is True and data["model"] == "plain" and data["unloaded"] is True
    # No chat format and no template in this GGUF: a text completion is what works.
    assert data["endpoint"] == "/v1/completions" and data["completion_tokens"] > 0
    assert data["estimate_bytes"] > 0 and data["measured_bytes"] > 0
    assert held(empty) == {}


def test_a_model_loaded_before_is_used_and_left_loaded(empty: NeuronProcess) -> None:
    profile = {"id": "resident", "source": "synthetic:tokens=4", "harness": "synthetic"}
    httpx.post(f"{empty.url}/models/load", json={"profile": profile},
               timeout=60).raise_for_status()
    done = validate(empty.url, "synthetic:tokens=4", "--harness", "synthetic",
                    "--id", "resident")
    assert done.returncode == 0, done.stderr
    assert "already holds resident: it stays loaded" in done.stdout
    assert "unload: done" not in done.stdout
    assert held(empty) == {"resident": "ready"}


def test_a_refused_source_exits_4_with_the_neurons_reason(empty: NeuronProcess,
                                                          tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF")
    done = validate(empty.url, str(outside))
    assert done.returncode == EXIT_CODES["load_failed"] == 4
    assert done.stderr.startswith("error: load: 403: ")
    assert held(empty) == {}


def test_an_unreachable_neuron_exits_3() -> None:
    done = validate(f"http://127.0.0.1:{free_port()}", "bundled")
    assert done.returncode == EXIT_CODES["unreachable"] == 3
    assert "error: neuron http://127.0.0.1:" in done.stderr


def test_load_timeout_comes_from_the_environment_and_exits_5(empty: NeuronProcess) -> None:
    done = validate(empty.url, "synthetic:load_ms=4000", "--harness", "synthetic",
                    env={"NEURON_LOAD_TIMEOUT": "0.5"})
    assert done.returncode == EXIT_CODES["load_timeout"] == 5, done.stderr
    assert "not ready within 0.5s (--load-timeout or NEURON_LOAD_TIMEOUT)" in done.stderr


def test_inference_timeout_exits_7_and_still_unloads(empty: NeuronProcess) -> None:
    done = validate(empty.url, "synthetic:ttft_ms=30000", "--harness", "synthetic",
                    "--id", "slow", env={"NEURON_INFER_TIMEOUT": "1"})
    assert done.returncode == EXIT_CODES["infer_timeout"] == 7, done.stderr
    assert "no answer within 1s (--infer-timeout or NEURON_INFER_TIMEOUT)" in done.stderr
    assert held(empty) == {}  # forced: the request that timed out did not hold it


def test_flags_override_the_environment() -> None:
    done = validate(f"http://127.0.0.1:{free_port()}", "bundled", "--load-timeout", "0",
                    env={"NEURON_LOAD_TIMEOUT": "10"})
    assert done.returncode == 2 and "--load-timeout" in done.stderr


def test_default_ids_name_the_file_and_cannot_collide_with_profiles() -> None:
    assert default_id("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M") == \
        "validate-Qwen2.5-0.5B-Instruct-GGUF-Q4_K_M"
    assert default_id("/srv/models/llama-3.1-8b.Q4_K_M.gguf") == \
        "validate-llama-3.1-8b.Q4_K_M"
    assert default_id("bundled:gemma3-270m") == "validate-bundled-gemma3-270m"


# --- the installed commands ----------------------------------------------------------------

@pytest.mark.parametrize("command", ["cortex", "neuron"])
def test_version_and_bash_completion(command: str) -> None:
    executable = BIN / command
    if not executable.exists():
        pytest.skip(f"{command} is not installed in this environment (pip install -e .)")
    version = subprocess.run([str(executable), "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0
    assert version.stdout.strip() == f"{command}, version {cortex.__version__}"

    variable = f"_{command.upper()}_COMPLETE"
    script = subprocess.run([str(executable)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, variable: "bash_source"})
    assert script.returncode == 0
    assert f"complete -o nosort -F _{command}_completion {command}" in script.stdout
    words = subprocess.run([str(executable)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, variable: "bash_complete",
                                "COMP_WORDS": f"{command} ", "COMP_CWORD": "1"})
    assert "plain,serve" in words.stdout.splitlines()
    if command == "cortex":
        assert "plain,validate" in words.stdout.splitlines()
