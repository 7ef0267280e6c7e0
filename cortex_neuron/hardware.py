"""What this host has to offer: GPUs (through the discover_gpus hook) and a memory budget."""

from __future__ import annotations

import logging
import os
from typing import Any

from cortex import GPU, NeuronConfig
from cortex.config import parse_bytes

__all__ = ["Hardware", "llama_gpu_offload", "system_memory"]

log = logging.getLogger("cortex.neuron.gpus")


def system_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def llama_gpu_offload() -> bool | None:
    """Whether the installed llama.cpp has a GPU to offload layers to; None without it.

    False for a build without CUDA, and for a CUDA build that finds no device (no driver
    in a container, say): either way every layer runs on the CPU whatever `n_gpu_layers`
    says, while NVML may still report the GPUs the budget is made of.
    """
    try:
        import llama_cpp
    except ImportError:
        return None
    except Exception as exc:  # its shared library failed to load (e.g. no CUDA runtime)
        log.warning("llama-cpp-python is installed but does not load: %s", exc)
        return None
    return bool(llama_cpp.llama_supports_gpu_offload())


class Hardware:
    """GPU readings and the node's budget: the sum of GPU memory, or system RAM on CPU-only.

    The budget is fixed at start-up (config `memory_budget`, else detected minus
    `memory_headroom`); what loaded models reserve against it is the registry's business.
    """

    def __init__(self, config: NeuronConfig, hook: Any) -> None:
        self._config = config
        self._hook = hook
        gpus = self.gpus()
        self.cpu_only = not gpus
        if self.cpu_only:
            log.info("no GPU found (no NVML or no device): CPU-only node, budget from system RAM")
        elif llama_gpu_offload() is False:
            log.warning("%d GPU(s) found but llama.cpp cannot offload to any (a CPU build "
                        "of llama-cpp-python, or a CUDA build that sees no device): models "
                        "will run on the CPU against a GPU-memory budget. See docs/deploy.md, "
                        "llama.cpp for your GPUs", len(gpus))
        if config.memory_budget is not None:
            self.budget_bytes = parse_bytes(config.memory_budget)
        else:
            detected = sum(g.memory_total for g in gpus) if gpus else system_memory()
            self.budget_bytes = max(0, detected - parse_bytes(config.memory_headroom))

    def gpus(self) -> list[GPU]:
        found = self._hook.discover_gpus(config=self._config)
        return list(found or [])
