"""Built-in model profiles: the models that ship as Python packages and need no download."""

from __future__ import annotations

from cortex.config import ModelProfile

__all__ = ["BUNDLED_GEMMA", "bundled_profiles"]

# Gemma 3 270M is a base model whose GGUF carries no chat template, so the profile
# names llama.cpp's built-in `gemma` format.
BUNDLED_GEMMA = ModelProfile(id="gemma3-270m", source="bundled:gemma3-270m",
                             aliases=["gemma-3-270m"], chat_format="gemma", n_ctx=4096, slots=1)


def bundled_profiles() -> list[ModelProfile]:
    return [BUNDLED_GEMMA]
