"""GPU discovery: NVML when present, a CPU-only node with a RAM budget otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from cortex import GPU, NeuronConfig, build_plugin_manager, hookimpl
from cortex_neuron.hardware import Hardware, system_memory
from cortex_plugins.nvml import read_nvml_gpus


def test_no_nvml_means_cpu_only_with_ram_budget(caplog: Any) -> None:
    caplog.set_level("INFO", logger="cortex.neuron.gpus")
    hardware = Hardware(NeuronConfig(memory_headroom="1GiB"), build_plugin_manager().hook)
    assert hardware.cpu_only and hardware.gpus() == []
    assert hardware.budget_bytes == system_memory() - 2**30
    assert sum("CPU-only" in r.message for r in caplog.records) == 1


def test_explicit_budget_wins() -> None:
    hardware = Hardware(NeuronConfig(memory_budget="3GiB"), build_plugin_manager().hook)
    assert hardware.budget_bytes == 3 * 2**30


def test_neuron_gpus_command_reports_cpu_only() -> None:
    out = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "gpus", "--json"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["cpu_only"] is True and report["gpus"] == []
    assert report["budget_bytes"] > 0


def test_a_plugin_can_report_gpus_before_nvml() -> None:
    class FakeAccelerators:
        @hookimpl
        def discover_gpus(self, config: NeuronConfig) -> Sequence[GPU] | None:
            return [GPU(index=0, name="Test GPU", memory_total=8 << 30, memory_used=1 << 30,
                        memory_free=7 << 30)]

    hardware = Hardware(NeuronConfig(memory_headroom=0),
                        build_plugin_manager(extra=[FakeAccelerators()]).hook)
    assert not hardware.cpu_only
    assert hardware.budget_bytes == 8 << 30


def test_read_nvml_gpus_maps_device_fields() -> None:
    # A stand-in for pynvml: no NVIDIA driver exists on the CI machines. The real
    # library is exercised on a GPU host (see docs/neuron.md, "GPU discovery").
    class NVMLError(Exception):
        pass

    def utilization(handle: int) -> Any:
        if handle == 1:
            raise NVMLError
        return SimpleNamespace(gpu=37)

    fake = SimpleNamespace(
        NVMLError=NVMLError,
        nvmlSystemGetDriverVersion=lambda: b"550.54",
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 << 30, used=h << 30,
                                                          free=(80 - h) << 30),
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetName=lambda h: f"NVIDIA H100 #{h}",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
    )
    gpus = read_nvml_gpus(fake)
    assert [g.name for g in gpus] == ["NVIDIA H100 #0", "NVIDIA H100 #1"]
    assert gpus[0].utilization == 37 and gpus[1].utilization is None
    assert gpus[1].memory_used == 1 << 30 and gpus[0].driver == "550.54"
