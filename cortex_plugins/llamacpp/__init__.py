"""The llama.cpp harness: GGUF models run in-process through llama-cpp-python.

llama_cpp, and the engine with its numpy, are imported lazily, so a gateway-only install
(no `neuron` extra) can still load this plugin module, and a gateway does not carry
them in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from cortex import (
    MAX_N_THREADS,
    Harness,
    InvalidRequest,
    MemoryEstimate,
    ModelProfile,
    ResolvedModel,
    UnsupportedFeature,
    hookimpl,
)

from .gguf import MetadataCache, estimate_memory, kv_bytes_per_token
from .grammar import llama_log
from .kept import KeptModels, WeightsKey
from .render import BuiltinRenderer, JinjaRenderer, Renderer, unknown_format

if TYPE_CHECKING:
    from .engine import LlamaEngine

__all__ = ["LlamaCppHarness", "physical_cores"]

log = logging.getLogger("cortex.neuron.llamacpp")


def physical_cores() -> int:
    """Physical cores (not hyperthreads): llama.cpp decodes fastest with one thread per core."""
    seen: set[tuple[str, str]] = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            seen.add(((cpu / "physical_package_id").read_text().strip(),
                      (cpu / "core_id").read_text().strip()))
        except OSError:
            continue
    return len(seen) or os.cpu_count() or 1


def _slots(profile: ModelProfile) -> int:
    return 1 if profile.embeddings else profile.slots


def _weights_key(profile: ModelProfile, model: ResolvedModel) -> WeightsKey:
    stat = os.stat(model.path)
    return (os.path.realpath(model.path), stat.st_size, stat.st_mtime_ns,
            profile.n_gpu_layers)


def _n_batch(profile: ModelProfile) -> int:
    """Tokens a decode step takes. Pooled embeddings need a whole input in one batch;
    past n_ctx x slots llama.cpp clamps it anyway (and our batch arrays would be wasted)."""
    if profile.embeddings:
        return profile.n_ctx
    return min(profile.n_batch, profile.n_ctx * profile.slots)


class LlamaCppHarness(Harness):
    name = "llamacpp"

    class Options(Harness.Options):
        n_threads: Annotated[int, msgspec.Meta(ge=1, le=MAX_N_THREADS)] | None = None
        flash_attn: bool = False
        use_mmap: bool = True
        verbose: bool = False
        prefill_chunk: int = 128
        # Keep an unloaded model's weights while the budget has room (kept.py).
        keep_weights: bool = True

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.metadata = MetadataCache()
        self.kept = KeptModels()

    def kept_bytes(self) -> int:
        return self.kept.total()

    def release_kept(self, needed: int, spare: tuple[ModelProfile, ResolvedModel] | None = None
                     ) -> int:
        return self.kept.release(needed, _weights_key(*spare) if spare else None)

    @classmethod
    def check_profile(cls, profile: ModelProfile) -> list[tuple[str, str]]:
        wrong = unknown_format(profile.chat_format) if profile.chat_format else None
        return [("chat_format", wrong)] if wrong else []

    def estimate(self, profile: ModelProfile, model: ResolvedModel,
                 overhead: int) -> MemoryEstimate:
        try:
            meta, n_vocab = self.metadata.get(model.path)
            slots = _slots(profile)
            return estimate_memory(model.files, meta, n_vocab=n_vocab, n_ctx=profile.n_ctx,
                                   slots=slots, n_batch=_n_batch(profile),
                                   overhead=overhead)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidRequest(f"{model.path} is not a usable GGUF: {exc}") from None

    def _renderer(self, profile: ModelProfile, model: ResolvedModel, llama_model: Any,
                  meta: dict[str, str]) -> tuple[Renderer | None, str]:
        def jinja(template: str, origin: str) -> JinjaRenderer:
            bos, eos = llama_model.token_bos(), llama_model.token_eos()
            return JinjaRenderer(
                template, bos_token=llama_model.token_get_text(bos) if bos >= 0 else "",
                eos_token=llama_model.token_get_text(eos) if eos >= 0 else "", origin=origin)

        if profile.chat_template:
            return jinja(profile.chat_template, "profile chat_template"), ""
        if profile.chat_format:
            return BuiltinRenderer(profile.chat_format), ""
        if meta.get("tokenizer.chat_template"):
            return jinja(meta["tokenizer.chat_template"], "GGUF metadata"), ""
        if model.chat_template:
            return jinja(model.chat_template, "tokenizer_config.json"), ""
        tried = ", ".join(model.template_repos_tried) or "none"
        return None, ("none in the GGUF metadata or the profile; tokenizer_config.json "
                      f"repos tried: {tried}")

    def _read(self, model: ResolvedModel, model_params: Any,
              progress: Callable[[float], None]) -> Any:
        """A llama_model read from the model's file."""
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        @llama_cpp.llama_progress_callback
        def on_progress(fraction: float, user_data: Any) -> bool:
            progress(float(fraction))
            return True

        model_params.progress_callback = on_progress
        try:
            return LlamaModel(path_model=model.path, params=model_params,
                              verbose=self.options.verbose)
        except ValueError as exc:
            raise InvalidRequest(f"llama.cpp could not load {model.path}: {exc}") from None

    def _release(self, key: WeightsKey, llama_model: Any) -> None:
        """What an engine does with its llama_model once its context is freed."""
        if not self.options.keep_weights:
            llama_model.close()
            return
        import llama_cpp

        self.kept.keep(key, llama_model, int(llama_cpp.llama_model_size(llama_model.model)))

    def load(self, profile: ModelProfile, model: ResolvedModel,
             progress: Callable[[float], None]) -> LlamaEngine:
        import llama_cpp
        from llama_cpp._internals import LlamaContext
        from llama_cpp._logger import set_verbose

        llama_cpp.llama_backend_init()
        set_verbose(self.options.verbose)  # llama.cpp's log is process-wide
        llama_log()  # ours wraps it, so grammar errors can be told to the client
        threads = profile.n_threads or self.options.n_threads or physical_cores()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0x7FFFFFFF if profile.n_gpu_layers < 0 \
            else profile.n_gpu_layers
        if not self.options.use_mmap:  # else llama.cpp's choice: it maps a file on a CPU
            # llama.cpp replaced use_mmap with load_mode; ctypes took the old name silently.
            model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE

        key = _weights_key(profile, model)
        llama_model = self.kept.take(key)
        if llama_model is None:
            llama_model = self._read(model, model_params, progress)
        else:
            log.info("%s: weights kept from its last load: %s not read again", profile.id,
                     model.path)
        meta = llama_model.metadata()
        self.metadata.put(model.path, (meta, int(llama_model.n_vocab())))
        slots = _slots(profile)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = profile.n_ctx * slots
        ctx_params.n_seq_max = slots
        ctx_params.kv_unified = False  # each slot gets its own n_ctx
        ctx_params.swa_full = True  # sliding-window layers keep every cell: prefix reuse works
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        n_batch = _n_batch(profile)
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.flash_attn_type = int(self.options.flash_attn)
        if profile.embeddings:
            ctx_params.embeddings = True
            arch = meta.get("general.architecture", "")
            # A generative model names no pooling; mean-pool so that each input gets
            # one vector, as OpenAI's API promises.
            ctx_params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED \
                if f"{arch}.pooling_type" in meta else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        try:
            ctx = LlamaContext(model=llama_model, params=ctx_params,
                               verbose=self.options.verbose)
        except ValueError as exc:
            llama_model.close()
            raise InvalidRequest(f"llama.cpp could not make a context for {model.path} "
                                 f"(n_ctx {profile.n_ctx} x {slots} slots): {exc}") from None
        measured = int(llama_cpp.llama_model_size(llama_model.model)) + \
            ctx.n_ctx() * kv_bytes_per_token(meta)
        from .engine import LlamaEngine, longest_token

        longest = self.metadata.longest_token(model.path, lambda: longest_token(llama_model))
        progress(1.0)

        try:
            return LlamaEngine(
                model=llama_model, ctx=ctx, profile=profile, slots=slots,
                n_ctx=ctx.n_ctx() // slots, n_batch=n_batch,
                prefill_chunk=self.options.prefill_chunk, measured_bytes=measured,
                longest=longest, release=lambda m: self._release(key, m),
                renderer_for=lambda p: self._renderer(p, model, llama_model, meta))
        except UnsupportedFeature:  # a chat_format llama.cpp does not know, a broken template
            ctx.close()
            llama_model.close()
            raise


@hookimpl
def register_harnesses() -> Iterable[type[Harness]]:
    return [LlamaCppHarness]
