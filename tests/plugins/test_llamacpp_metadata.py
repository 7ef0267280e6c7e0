"""The llama.cpp harness reads a GGUF's metadata, and measures its vocabulary, once per file,
not before every load."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from cortex import ModelProfile, ResolvedModel
from cortex.errors import InvalidRequest
from cortex_plugins.llamacpp import LlamaCppHarness

pytestmark = pytest.mark.model


def resolved(path: Path) -> ResolvedModel:
    return ResolvedModel(files=[str(path)], total_bytes=path.stat().st_size, origin="local")


def harness() -> LlamaCppHarness:
    return LlamaCppHarness(LlamaCppHarness.Options(n_threads=1))


def test_estimates_of_one_file_read_it_once(gemma_path: Path) -> None:
    llama = harness()
    model = resolved(gemma_path)
    small = llama.estimate(ModelProfile(id="a", source="x", n_ctx=512), model, 0)
    large = llama.estimate(ModelProfile(id="b", source="x", n_ctx=2048), model, 0)
    assert llama.metadata.reads == 1
    assert large.kv_cache == 4 * small.kv_cache  # the cached metadata still drives the sums


def test_a_load_leaves_the_metadata_for_the_next_estimate(gemma_path: Path) -> None:
    llama = harness()
    model = resolved(gemma_path)
    profile = ModelProfile(id="a", source="x", n_ctx=256)
    engine = llama.load(profile, model, lambda fraction: None)
    try:
        assert llama.estimate(profile, model, 0).weights == gemma_path.stat().st_size
        assert llama.metadata.reads == 0
    finally:
        asyncio.run(engine.close())


def test_loads_of_one_file_measure_its_vocabulary_once(gemma_path: Path) -> None:
    """The longest token bounds the prompts worth tokenizing; scanning 262k tokens
    through ctypes was a third of every swap back to a model."""
    llama = harness()
    model = resolved(gemma_path)
    limits = []
    for n_ctx in (256, 512):
        engine = llama.load(ModelProfile(id="a", source="x", n_ctx=n_ctx), model,
                            lambda fraction: None)
        limits.append(engine._max_prompt_bytes)
        asyncio.run(engine.close())
    assert llama.metadata.measures == 1
    assert limits[1] == 2 * limits[0] > 512  # the cached length still bounds the prompt


def test_a_changed_file_is_read_again(gemma_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(gemma_path, copy)
    llama = harness()
    profile = ModelProfile(id="a", source="x", n_ctx=512)
    llama.estimate(profile, resolved(copy), 0)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    llama.estimate(profile, resolved(copy), 0)
    assert llama.metadata.reads == 2
    copy.unlink()
    with pytest.raises(InvalidRequest, match="not a usable GGUF"):
        llama.estimate(profile, ResolvedModel(files=[str(copy)], total_bytes=0,
                                              origin="local"), 0)
