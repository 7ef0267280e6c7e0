"""The harness's use_mmap option reaches llama.cpp: a mapped GGUF is what lets a swap
back to a model find its pages in the page cache, and use_mmap = false must read it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from cortex import ModelProfile, ResolvedModel
from cortex_plugins.llamacpp import LlamaCppHarness

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not Path("/proc/self/maps").exists(),
                                 reason="reads the process's mappings from /proc")]


@pytest.mark.parametrize("use_mmap", [True, False])
def test_use_mmap_decides_whether_the_file_is_mapped(gemma_path: Path, tmp_path: Path,
                                                     use_mmap: bool) -> None:
    copy = tmp_path / "mapped-or-not.gguf"  # a file no other test has mapped
    shutil.copyfile(gemma_path, copy)
    harness = LlamaCppHarness(LlamaCppHarness.Options(n_threads=1, use_mmap=use_mmap))
    model = ResolvedModel(files=[str(copy)], total_bytes=copy.stat().st_size, origin="local")
    engine = harness.load(ModelProfile(id="a", source="x", n_ctx=256), model,
                          lambda fraction: None)
    try:
        mapped = str(copy.resolve()) in Path("/proc/self/maps").read_text()
    finally:
        asyncio.run(engine.close())
    assert mapped == use_mmap
