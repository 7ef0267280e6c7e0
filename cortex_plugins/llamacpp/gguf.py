"""What a GGUF needs in memory, read from its header (llama.cpp loads the vocabulary only)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cortex import MemoryEstimate

__all__ = [
    "MetadataCache", "compute_bytes", "estimate_memory", "kv_bytes_per_token", "read_metadata",
]

KV_DTYPE_BYTES = 2  # f16, llama.cpp's default KV cache type
F32 = 4
BATCH_BYTES_PER_TOKEN = 64  # our llama_batch: token, pos, seq id (and its pointer), flag


def read_metadata(path: str) -> tuple[dict[str, str], int]:
    """GGUF key/values as llama.cpp reports them (strings) and the vocabulary's size,
    without loading weights."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=path, params=params, verbose=False)
    try:
        metadata: dict[str, str] = model.metadata()
        return metadata, int(model.n_vocab())
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
        self._entries: dict[tuple[str, int, int], tuple[dict[str, str], int]] = {}
        self._longest: dict[tuple[str, int, int], int] = {}
        self.reads = 0  # files really read: what the cache saves is visible to tests
        self.measures = 0  # vocabularies really scanned for their longest token

    @staticmethod
    def _key(path: str) -> tuple[str, int, int]:
        stat = os.stat(path)
        return os.path.realpath(path), stat.st_size, stat.st_mtime_ns

    def get(self, path: str) -> tuple[dict[str, str], int]:
        """The file's key/values and vocabulary size."""
        key = self._key(path)
        meta = self._entries.get(key)
        if meta is None:
            meta = read_metadata(path)
            self.reads += 1
        self._store(key, meta)
        return meta

    def put(self, path: str, meta: tuple[dict[str, str], int]) -> None:
        """Remember what a full load read, so the next estimate of the file is free."""
        self._store(self._key(path), meta)

    def longest_token(self, path: str, measure: Callable[[], int]) -> int:
        """Bytes in the file's longest token text, measured (`measure`) once per file:
        a pass over the vocabulary through ctypes, 0.3 to 0.8 s for Gemma 3's 262k
        tokens, was a third of every swap."""
        key = self._key(path)
        longest = self._longest.pop(key, None)
        if longest is None:
            longest = measure()
            self.measures += 1
        self._longest[key] = longest
        while len(self._longest) > self._limit:
            del self._longest[next(iter(self._longest))]
        return longest

    def _store(self, key: tuple[str, int, int], meta: tuple[dict[str, str], int]) -> None:
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


def compute_bytes(meta: dict[str, str], *, n_vocab: int, n_ctx: int, slots: int,
                  n_batch: int) -> int:
    """llama.cpp's compute buffer, its output buffer and our batch arrays.

    llama.cpp sizes the compute buffer by a worst-case graph of n_ubatch tokens (we set
    n_ubatch = n_batch) that keeps logits for every one of them: n_batch x n_vocab f32,
    which dominates for a large vocabulary (Gemma 3: 1 MiB a token; its measured buffer
    is 514.5 MiB at n_batch 512, 2058 MiB at 2048, 4116 MiB at 4096, whatever n_ctx).
    Attention scores (n_batch x n_ctx x heads) and activations are added on top, which
    errs high where the allocator overlaps them with the logits. The output buffer
    keeps one row of logits per slot.
    """
    arch = meta.get("general.architecture", "llama")
    n_embd = _int(meta, f"{arch}.embedding_length")
    n_head = _int(meta, f"{arch}.attention.head_count")
    n_ff = _int(meta, f"{arch}.feed_forward_length", 4 * n_embd)
    per_token = F32 * (n_vocab + n_head * n_ctx + 4 * n_embd + n_ff) + BATCH_BYTES_PER_TOKEN
    return n_batch * per_token + slots * n_vocab * F32


def estimate_memory(files: list[str], meta: dict[str, str], *, n_vocab: int, n_ctx: int,
                    slots: int, n_batch: int, overhead: int) -> MemoryEstimate:
    """Weights (the GGUF files) + KV cache for n_ctx x slots tokens + compute buffers
    for n_batch tokens + a fixed overhead.

    Sliding-window layers (Gemma 3) really take less KV than this; erring high keeps a
    node from accepting a load it cannot hold.
    """
    weights = sum(os.path.getsize(f) for f in files)
    kv_cache = n_ctx * slots * kv_bytes_per_token(meta)
    compute = compute_bytes(meta, n_vocab=n_vocab, n_ctx=n_ctx, slots=slots, n_batch=n_batch)
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, overhead=overhead,
                          compute=compute, total=weights + kv_cache + compute + overhead)
