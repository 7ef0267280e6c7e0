"""What a GGUF needs in memory, read from its header (llama.cpp loads the vocabulary only)."""

from __future__ import annotations

import os
from typing import Any

from cortex import MemoryEstimate

__all__ = ["MetadataCache", "estimate_memory", "kv_bytes_per_token", "read_metadata"]

KV_DTYPE_BYTES = 2  # f16, llama.cpp's default KV cache type


def read_metadata(path: str) -> dict[str, str]:
    """GGUF key/values as llama.cpp reports them (strings), without loading weights."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=path, params=params, verbose=False)
    try:
        metadata: dict[str, str] = model.metadata()
        return metadata
    finally:
        model.close()


class MetadataCache:
    """GGUF metadata by file (its real path, size and mtime), most recent last.

    llama.cpp's vocabulary-only read takes about as long as loading the model itself
    (most of a load is building the vocabulary), so estimating before every load would
    double each swap back to a model this neuron has read before.
    """

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._entries: dict[tuple[str, int, int], dict[str, str]] = {}
        self.reads = 0  # files really read: what the cache saves is visible to tests

    @staticmethod
    def _key(path: str) -> tuple[str, int, int]:
        stat = os.stat(path)
        return os.path.realpath(path), stat.st_size, stat.st_mtime_ns

    def get(self, path: str) -> dict[str, str]:
        key = self._key(path)
        meta = self._entries.get(key)
        if meta is None:
            meta = read_metadata(path)
            self.reads += 1
        self._store(key, meta)
        return meta

    def put(self, path: str, meta: dict[str, str]) -> None:
        """Remember what a full load read, so the next estimate of the file is free."""
        self._store(self._key(path), meta)

    def _store(self, key: tuple[str, int, int], meta: dict[str, str]) -> None:
        self._entries.pop(key, None)
        self._entries[key] = meta
        while len(self._entries) > self._limit:
            del self._entries[next(iter(self._entries))]


def _int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key)
    if value is None:
        if default is None:
            raise KeyError(f"GGUF metadata has no `{key}`")
        return default
    return int(value)


def kv_bytes_per_token(meta: dict[str, str]) -> int:
    """K and V bytes one token takes across all layers."""
    arch = meta.get("general.architecture", "llama")
    n_layer = _int(meta, f"{arch}.block_count")
    n_head = _int(meta, f"{arch}.attention.head_count")
    n_head_kv = _int(meta, f"{arch}.attention.head_count_kv", n_head)
    n_embd = _int(meta, f"{arch}.embedding_length")
    k_len = _int(meta, f"{arch}.attention.key_length", n_embd // max(n_head, 1))
    v_len = _int(meta, f"{arch}.attention.value_length", k_len)
    return n_layer * n_head_kv * (k_len + v_len) * KV_DTYPE_BYTES


def estimate_memory(files: list[str], meta: dict[str, str], *, n_ctx: int, slots: int,
                    overhead: int) -> MemoryEstimate:
    """Weights (the GGUF files) + KV cache for n_ctx x slots tokens + a fixed overhead.

    Sliding-window layers (Gemma 3) really take less KV than this; erring high keeps a
    node from accepting a load it cannot hold.
    """
    weights = sum(os.path.getsize(f) for f in files)
    kv_cache = n_ctx * slots * kv_bytes_per_token(meta)
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, overhead=overhead,
                          total=weights + kv_cache + overhead)
