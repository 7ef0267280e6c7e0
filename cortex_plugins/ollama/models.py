"""The catalogue in Ollama's shapes: `/api/tags` (what can be served), `/api/ps` (what is
loaded) and `/api/show` (one model).

Ollama's models are files it keeps; here a model is a profile the fleet can load, so
the fields describe that: `size` is the memory one loaded copy takes (0 until one has
been), the digest is a stable hash of the id (clients use it as a key), and the GGUF
details the gateway does not read are empty strings. Aliases are listed as models of
their own, as the other dialects list them, so a client may pick either name.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cortex import CatalogueEntry

__all__ = ["details", "digest", "running", "show", "tag"]

_EPOCH = "1970-01-01T00:00:00Z"  # the catalogue has no modification times
# What /api/ps says of a model kept loaded with no idle TTL (Ollama says a far date too).
_NEVER = "2318-01-01T00:00:00Z"


def digest(model_id: str) -> str:
    return hashlib.sha256(model_id.encode()).hexdigest()


def details() -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": "", "families": None,
            "parameter_size": "", "quantization_level": ""}


def _names(entry: CatalogueEntry) -> list[str]:
    return [entry.id, *entry.aliases]


def tag(entry: CatalogueEntry) -> list[dict[str, Any]]:
    """An entry's `/api/tags` items: its id and each alias."""
    return [{"name": name, "model": name, "modified_at": _EPOCH, "size": entry.bytes,
             "digest": digest(entry.id), "details": details()} for name in _names(entry)]


def _expires(entry: CatalogueEntry, now: Callable[[], float]) -> str:
    """When an idle TTL would unload it, counted from now (the gateway does not say how
    long it has been idle already, so this is the latest it can be)."""
    if entry.ttl is None or entry.pinned:
        return _NEVER
    return datetime.fromtimestamp(now() + entry.ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running(entry: CatalogueEntry, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """An `/api/ps` item: a model loaded on at least one node."""
    return {"name": entry.id, "model": entry.id, "size": entry.bytes,
            "digest": digest(entry.id), "details": details(),
            "expires_at": _expires(entry, now), "size_vram": entry.bytes,
            "context_length": entry.n_ctx}


def show(entry: CatalogueEntry) -> dict[str, Any]:
    """`/api/show`: what a client needs to use the model (its context, what it can do)."""
    capabilities = ["embedding"] if entry.embeddings else ["completion", "tools"]
    parameters = f"num_ctx {entry.n_ctx}" if entry.n_ctx else ""
    return {"modelfile": f"# served by cortex\nFROM {entry.id}\n", "parameters": parameters,
            "template": "", "details": details(),
            "model_info": {"general.architecture": "cortex",
                           "cortex.context_length": entry.n_ctx},
            "capabilities": capabilities, "modified_at": _EPOCH}
