"""GGUF files on disk or in a hub repo: split models' shard names, and sizes.

A split GGUF is named `PREFIX-00001-of-00003.gguf`, ...; llama.cpp opens the first
shard and finds the others beside it, so a source names the first and every shard
must be there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["group_models", "split_paths", "total_bytes"]

_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)


def group_models(paths: Iterable[str]) -> list[list[str]]:
    """Group GGUF paths into models: a split's shards are one model, in shard order."""
    models: dict[str, list[str]] = {}
    for path in sorted(paths):
        split = _SPLIT_RE.match(path)
        key = f"{split['prefix']}-of-{split['count']}".lower() if split else path
        models.setdefault(key, []).append(path)
    return list(models.values())


def split_paths(path: str) -> list[str] | None:
    """Every shard's path when `path` names a shard of a split GGUF, else None."""
    split = _SPLIT_RE.match(path)
    if split is None:
        return None
    prefix, count, tail = split["prefix"], split["count"], path[split.end("count"):]
    return [f"{prefix}-{i:05d}-of-{count}{tail}" for i in range(1, int(count) + 1)]


def total_bytes(files: list[str]) -> int:
    return sum(os.path.getsize(f) for f in files)
