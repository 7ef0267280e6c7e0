"""Built-in model profiles: the models that ship as Python packages and need no download."""

from __future__ import annotations

from cortex.chat_templates import GEMMA_TOOLS
from cortex.config import ModelProfile

__all__ = ["BUNDLED_GEMMA", "bundled_profiles"]

# Gemma 3 270M is a base model whose GGUF carries no chat template. Ours speaks Gemma's
# turn markers and describes tools, so agents (Claude Code sends ~24 tools with every
# request) get answers rather than a 400. `claude-*` sends whatever Claude model name
# a Claude Code release asks for here (cortex.aliases). 32k tokens a slot hold an
# agent's first prompt (Claude Code's is ~20,000 tokens with its tools) and 4 slots
# batch concurrent requests; the KV cache is n_ctx x slots cells (2.25 GiB here, about
# 2.6 GiB resident in all): docs/neuron.md has the measured memory of other shapes.
# A base model rarely stops on its own, and some clients (Codex) send no output budget:
# 2048 tokens is where a request that sets none ends (a client may ask for more).
BUNDLED_GEMMA = ModelProfile(id="gemma3-270m", source="bundled:gemma3-270m",
                             aliases=["gemma-3-270m", "claude-*"], chat_template=GEMMA_TOOLS,
                             n_ctx=32768, slots=4, default_max_tokens=2048)


def bundled_profiles() -> list[ModelProfile]:
    return [BUNDLED_GEMMA]
