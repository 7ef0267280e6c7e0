"""The llama.cpp harness: GGUF models run in-process through llama-cpp-python.

llama_cpp is imported lazily, so a gateway-only install (no `neuron` extra) can still
load this plugin module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cortex import Harness, MemoryEstimate, ModelProfile, ResolvedModel, hookimpl
from cortex.errors import InvalidRequest

from .engine import LlamaEngine
from .gguf import estimate_memory, kv_bytes_per_token, read_metadata
from .render import BuiltinRenderer, JinjaRenderer, Renderer

__all__ = ["LlamaCppHarness", "physical_cores"]


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


class LlamaCppHarness(Harness):
    name = "llamacpp"

    class Options(Harness.Options):
        n_threads: int | None = None
        flash_attn: bool = False
        use_mmap: bool = True
        verbose: bool = False

    options: Options

    def estimate(self, profile: ModelProfile, model: ResolvedModel,
                 overhead: int) -> MemoryEstimate:
        try:
            meta = read_metadata(model.path)
            return estimate_memory(model.files, meta, n_ctx=profile.n_ctx, slots=profile.slots,
                                   overhead=overhead)
        except (ValueError, KeyError) as exc:
            raise InvalidRequest(f"{model.path} is not a usable GGUF: {exc}") from None

    def _renderer(self, profile: ModelProfile, model: ResolvedModel, llama: object,
                  meta: dict[str, str]) -> tuple[Renderer | None, str]:
        def jinja(template: str, origin: str) -> JinjaRenderer:
            get_text = llama._model.token_get_text  # type: ignore[attr-defined]
            bos, eos = llama.token_bos(), llama.token_eos()  # type: ignore[attr-defined]
            return JinjaRenderer(template, bos_token=get_text(bos) if bos >= 0 else "",
                                 eos_token=get_text(eos) if eos >= 0 else "", origin=origin)

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

    def load(self, profile: ModelProfile, model: ResolvedModel,
             progress: Callable[[float], None]) -> LlamaEngine:
        import llama_cpp
        from llama_cpp import Llama, llama_model_size

        threads = profile.n_threads or self.options.n_threads or physical_cores()
        progress(0.0)
        pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        if profile.embeddings:
            header = read_metadata(model.path)
            arch = header.get("general.architecture", "")
            if f"{arch}.pooling_type" not in header:
                # A generative model names no pooling; mean-pool so that each input
                # gets one vector, as OpenAI's API promises.
                pooling = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        try:
            llama = Llama(model_path=model.path, n_ctx=profile.n_ctx, pooling_type=pooling,
                          n_gpu_layers=profile.n_gpu_layers, n_threads=threads,
                          n_threads_batch=threads, n_batch=profile.n_batch,
                          embedding=profile.embeddings, use_mmap=self.options.use_mmap,
                          flash_attn=self.options.flash_attn, verbose=self.options.verbose)
        except ValueError as exc:
            raise InvalidRequest(f"llama.cpp could not load {model.path}: {exc}") from None
        meta: dict[str, str] = dict(llama.metadata)
        renderer, reason = self._renderer(profile, model, llama, meta)
        measured = int(llama_model_size(llama.model)) + llama.n_ctx() * kv_bytes_per_token(meta)
        progress(1.0)
        return LlamaEngine(llama, model_id=profile.id, n_ctx=llama.n_ctx(), renderer=renderer,
                           no_template_reason=reason, embeddings=profile.embeddings,
                           max_tokens_cap=profile.max_tokens, measured_bytes=measured)


@hookimpl
def register_harnesses() -> Iterable[type[Harness]]:
    return [LlamaCppHarness]
