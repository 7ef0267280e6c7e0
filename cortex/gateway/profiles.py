"""The gateway's model profiles, looked up by id, alias or alias pattern.

An index is immutable: a config reload builds a new one and swaps it in, so a request
that resolved its profile keeps a consistent view until it finishes.

A name is looked up exactly first (ids and aliases; `NAME:latest` is also `NAME`, as
Ollama's clients name models), then against the alias patterns
(cortex.aliases: `claude-*`), most specific first; among equally specific patterns the
configuration's order decides (load_gateway_config refuses two of different profiles
that could both match one name).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import msgspec

from cortex.aliases import AliasPattern, is_pattern
from cortex.config import ModelProfile
from cortex.errors import ModelNotFound

__all__ = ["ProfileIndex"]

#: The tag Ollama's clients add to a bare model name: `gemma:latest` is `gemma` when no
#: id or alias is named so whole.
_DEFAULT_TAG = ":latest"


class ProfileIndex:
    def __init__(self, profiles: Iterable[ModelProfile],
                 pins: Mapping[str, bool] | None = None,
                 ttls: Mapping[str, float | None] | None = None) -> None:
        """`pins` overrides profiles' `pinned` (runtime pin/unpin from the admin API),
        `ttls` their `ttl` (a client's keep-alive, through GatewayAPI.set_ttl)."""
        pins = pins or {}
        ttls = ttls or {}
        self._by_id: dict[str, ModelProfile] = {}
        self._names: dict[str, str] = {}
        self._patterns: list[tuple[AliasPattern, str]] = []
        for profile in profiles:
            if profile.id in pins:
                profile = msgspec.structs.replace(profile, pinned=pins[profile.id])
            if profile.id in ttls:
                profile = msgspec.structs.replace(profile, ttl=ttls[profile.id])
            self._by_id[profile.id] = profile
            self._names.setdefault(profile.id, profile.id)
            for name in profile.aliases:
                if is_pattern(name):
                    self._patterns.append((AliasPattern(name), profile.id))
                else:
                    self._names.setdefault(name, profile.id)
        self._patterns.sort(key=lambda entry: -entry[0].specificity)  # stable: config order

    def __iter__(self) -> Iterator[ModelProfile]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, model_id: str) -> ModelProfile | None:
        return self._by_id.get(model_id)

    def resolve(self, name: str) -> ModelProfile:
        """The profile a client's `model` names (id, alias, then the most specific alias
        pattern); ModelNotFound otherwise."""
        model_id = self._names.get(name)
        if model_id is None and name.endswith(_DEFAULT_TAG):  # Ollama's `name:latest`
            model_id = self._names.get(name.removesuffix(_DEFAULT_TAG))
        if model_id is None:
            model_id = next((owner for pattern, owner in self._patterns
                             if pattern.matches(name)), None)
            if model_id is None:
                raise ModelNotFound(name)
        return self._by_id[model_id]
