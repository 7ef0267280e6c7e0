"""Turn a profile's `source` into local files the harness can open.

Three forms (see ModelProfile): `bundled:NAME` (a model shipped as a Python package),
a path inside the neuron's `model_dirs`, and `hf://owner/repo[@rev]/file.gguf` or
`hf://owner/repo[@rev]:PATTERN` on the HuggingFace hub (cortex_neuron.hub). Resolution
blocks (it may download gigabytes), so the neuron calls it from a worker thread.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType

from cortex.config import NeuronConfig
from cortex.errors import CortexError, InvalidRequest, NotFound, PermissionDenied
from cortex.harness import ResolvedModel
from cortex.sources import BUNDLED_MODELS

from .hub import INSTALL_HINT, HubSource, hf_cache_dir
from .shards import split_paths, total_bytes

__all__ = ["BUNDLED_MODELS", "SourceResolver", "hf_cache_dir"]

logger = logging.getLogger("cortex.neuron.sources")


class SourceResolver:
    """Resolves sources for one neuron; safe to share between worker threads."""

    def __init__(self, config: NeuronConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        # Bundled files this process has hash-checked: path -> (size, mtime_ns) then.
        self._verified: dict[str, tuple[int, int]] = {}

    def resolve(self, source: str) -> ResolvedModel:
        """Return the model's local files, downloading or assembling them if needed."""
        if source.startswith("bundled:"):
            return self._resolve_bundled(source.removeprefix("bundled:"))
        if source.startswith("hf://"):
            return HubSource(self.config, source).resolve()
        return self._resolve_path(source)

    # bundled:NAME

    def _resolve_bundled(self, name: str) -> ResolvedModel:
        module_name = BUNDLED_MODELS.get(name)
        if module_name is None:
            known = ", ".join(sorted(BUNDLED_MODELS))
            raise NotFound(f"unknown bundled model `{name}` (bundled models: {known})")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise InvalidRequest(
                f"bundled model `{name}` needs the Python package `{module_name}`: "
                f"{INSTALL_HINT}") from None
        target = os.path.join(os.path.expanduser(self.config.cache_dir), "models",
                              str(module.MODEL_NAME))
        # Hash once per process, not per load: the ~1s check then guards against a file
        # damaged between runs, while evict/reload cycles reuse it for free. The lock keeps
        # two loads of one model from assembling it at once.
        with self._lock:
            stamp = _stamp(target)
            if stamp is None or self._verified.get(target) != stamp:
                _assemble(name, module, target)
                stamp = _stamp(target)
                assert stamp is not None
                self._verified[target] = stamp
        return ResolvedModel(files=[target], total_bytes=stamp[0], origin=f"bundled:{name}")

    # local paths

    def _resolve_path(self, source: str) -> ResolvedModel:
        dirs = [os.path.abspath(os.path.expanduser(d)) for d in self.config.model_dirs]
        if not dirs:
            raise PermissionDenied(
                f"model path `{source}` refused: no model_dirs are configured on this neuron "
                "(set model_dirs in neuron.toml to serve local files)")
        allowed = [os.path.realpath(d) for d in dirs]
        path = os.path.expanduser(source)
        candidates = [path] if os.path.isabs(path) else [os.path.join(d, path) for d in dirs]
        for candidate in map(os.path.abspath, candidates):
            # realpath first: `..` and symlinks must not lead out of the allowed dirs, and a
            # path outside them is refused before its existence is checked (no probing).
            if not _inside(os.path.realpath(candidate), allowed):
                raise self._outside(source)
            if os.path.isdir(candidate):
                raise InvalidRequest(f"model path `{source}` is a directory, not a GGUF file")
            if os.path.isfile(candidate):
                files = self._local_shards(source, candidate, allowed)
                return ResolvedModel(files=files, total_bytes=total_bytes(files), origin=candidate)
        where = ", ".join(self.config.model_dirs)
        raise NotFound(f"model file `{source}` not found (looked in model_dirs: {where})")

    def _local_shards(self, source: str, first: str, allowed: list[str]) -> list[str]:
        # Files keep the name they were given, not their realpath: llama.cpp finds the other
        # shards beside the path it opens, and in a hub snapshot the real files are blobs
        # named by hash. Each shard is still checked for an escaping symlink.
        files = split_paths(first)
        if files is None:
            return [first]
        if files[0] != first:
            raise InvalidRequest(f"`{source}` is not the first shard of its split model")
        for file in files[1:]:
            if not _inside(os.path.realpath(file), allowed):
                raise self._outside(file)
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            raise NotFound(f"split model `{source}` is incomplete: missing {', '.join(missing)}")
        return files

    def _outside(self, path: str) -> PermissionDenied:
        return PermissionDenied(
            f"model path `{path}` is outside the configured model_dirs "
            f"({', '.join(self.config.model_dirs)})")


def _assemble(name: str, module: ModuleType, target: str) -> None:
    """Check or write a bundled model; a new file appears only once complete."""
    if os.path.exists(target):
        try:
            module.assemble(target)  # returns an intact existing file after hashing it
            return
        except FileExistsError:
            logger.warning("bundled model %s at %s is damaged; assembling it again", name, target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = f"{target}.{os.getpid()}.{threading.get_ident()}.partial"
    logger.info("assembling bundled model %s into %s", name, target)
    try:
        module.assemble(partial)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise CortexError(
            f"bundled model `{name}` could not be assembled into {target}: {exc} "
            f"(reinstall with {INSTALL_HINT})") from exc
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _inside(path: str, allowed: list[str]) -> bool:
    return any(os.path.commonpath([path, d]) == d for d in allowed)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
