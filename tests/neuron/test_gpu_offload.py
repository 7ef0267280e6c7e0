"""A GPU host whose llama.cpp cannot offload says so: at the neuron's start and in `neuron gpus`.

No GPU exists on the CI machines, so the GPUs come from a test plugin on the
`discover_gpus` hook: the same hook NVML answers through (cortex_plugins/nvml.py), which
is the only way a neuron learns of GPUs. The llama.cpp side is the real installed
llama-cpp-python, a CPU build here, whose `llama_supports_gpu_offload()` answers False.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence

import pytest
from click.testing import CliRunner

import cortex_neuron.cli
from cortex import GPU, NeuronConfig, Plugins, build_plugin_manager, hookimpl
from cortex_neuron import create_app
from cortex_neuron.hardware import llama_gpu_offload

pytest.importorskip("llama_cpp")


class OneGPU:
    """Reports one 24 GiB GPU, as NVML would on a GPU host."""

    @hookimpl
    def discover_gpus(self, config: NeuronConfig) -> Sequence[GPU] | None:
        return [GPU(index=0, name="Test GPU", memory_total=24 << 30, memory_used=0,
                    memory_free=24 << 30, driver="550.54")]


def offload_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "cannot offload" in r.getMessage()]


def test_the_cpu_build_of_llama_cpp_cannot_offload() -> None:
    assert llama_gpu_offload() is False


def test_a_neuron_with_gpus_and_a_cpu_llama_cpp_warns_at_start(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="cortex.neuron.gpus")
    create_app(NeuronConfig(), Plugins(build_plugin_manager(extra=[OneGPU()])))
    [warning] = offload_warnings(caplog)
    assert "1 GPU(s) found" in warning and "run on the CPU" in warning


def test_a_cpu_only_neuron_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="cortex.neuron.gpus")
    create_app(NeuronConfig(), Plugins(build_plugin_manager()))
    assert offload_warnings(caplog) == []
    assert any("CPU-only" in r.getMessage() for r in caplog.records)


def test_neuron_gpus_reports_offload() -> None:
    out = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "gpus", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["gpu_offload"] is False
    text = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "gpus"],
                          capture_output=True, text=True, check=True).stdout
    assert "llama.cpp: no GPU offload (a CPU build, or no device it can use)" in text


def test_neuron_gpus_on_a_gpu_host_says_models_would_run_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process, so that the command's plugin manager can carry the test GPU plugin.
    monkeypatch.setattr(cortex_neuron.cli, "build_plugin_manager",
                        lambda: build_plugin_manager(extra=[OneGPU()]))
    result = CliRunner().invoke(cortex_neuron.cli.main, ["gpus"])
    assert result.exit_code == 0, result.output
    assert "Test GPU" in result.output
    assert "no device it can use): models would run on the CPU" in result.output
