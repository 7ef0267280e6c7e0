"""llama.cpp models kept after their unload, so that loading one again skips its file.

Unloading frees a model's context (KV cache, compute buffers) and its weights; loading
it again maps the GGUF and builds its vocabulary anew, which for Gemma 3's 262,144 tokens
is most of a load. Models on a node with room for one often take turns (a swap), so the
weights are kept instead: the neuron counts them as free memory and asks for them back
(`release`) before a load that needs the room. A context is cheap to make again; the
same `llama_model` serves a new one as llama-server's several contexts share one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["KeptModels", "WeightsKey"]

# What makes a loaded llama_model reusable: the file (its real path, size and mtime, so
# a replaced file is read again) and how many layers were offloaded.
WeightsKey = tuple[str, int, int, int]


class KeptModels:
    """llama_model objects no engine holds, by WeightsKey, the longest kept first.
    Thread-safe: engines keep from their scheduler thread, loads take from a worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: OrderedDict[WeightsKey, tuple[Any, int]] = OrderedDict()

    def keep(self, key: WeightsKey, model: Any, size: int) -> None:
        """Keep `model` (a llama_cpp LlamaModel) holding `size` bytes; one kept earlier
        under the same key is freed."""
        with self._lock:
            old = self._models.pop(key, None)
            self._models[key] = (model, size)
        if old is not None:
            old[0].close()

    def take(self, key: WeightsKey) -> Any | None:
        """The model kept under `key`, now the caller's; None where there is none."""
        with self._lock:
            entry = self._models.pop(key, None)
        return entry[0] if entry is not None else None

    def total(self) -> int:
        with self._lock:
            return sum(size for _, size in self._models.values())

    def release(self, needed: int, spare: WeightsKey | None = None) -> int:
        """Free models, the longest kept first, until `needed` bytes are freed. `spare`
        is never freed: the load asking is about to take it, and its bytes then count in
        that load's own estimate (so they are part of what it needs). The bytes freed."""
        freed = 0
        with self._lock:
            if spare is not None and spare in self._models:
                freed = self._models[spare][1]
        while freed < needed:
            with self._lock:
                key = next((k for k in self._models if k != spare), None)
                if key is None:
                    break
                model, size = self._models.pop(key)
            model.close()
            freed += size
        return freed
