"""GPU discovery through NVML (nvidia-ml-py). The `trylast` fallback for discover_gpus."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cortex import GPU, NeuronConfig, hookimpl

log = logging.getLogger("cortex.neuron.gpus")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml_gpus(nvml: Any) -> list[GPU]:
    """Read every device through an initialised pynvml module."""
    gpus: list[GPU] = []
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            utilization = None
        gpus.append(GPU(index=index, name=_text(nvml.nvmlDeviceGetName(handle)),
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        memory_total=int(memory.total), memory_used=int(memory.used),
                        memory_free=int(memory.free), utilization=utilization, driver=driver))
    return gpus


@hookimpl(trylast=True)
def discover_gpus(config: NeuronConfig) -> Sequence[GPU] | None:
    """NVIDIA GPUs, or an empty list (CPU-only) when NVML or its library is missing."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        return read_nvml_gpus(pynvml)
    finally:
        pynvml.nvmlShutdown()
