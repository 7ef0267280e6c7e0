"""LiveConfig: the gateway's configuration as it is now, swapped whole on a reload.

It holds what a reload or a runtime pin changes (the config, the profiles with their
pins, the router built from the routing and eviction plugins, the API keys, the
dialects' options) and says
so: `version` counts changes, `changed()` waits for the next, and `on_reload` callbacks
apply a new config to the parts that hold a copy (the fleet's neuron list) before
`reload()` returns. Keys load here at start and on every reload, failing closed: a
keys file that lost its keys refuses both, and a refused reload keeps the old keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from cortex.config import GatewayConfig, GatewaySection, ModelProfile
from cortex.dialect import Dialect
from cortex.errors import Conflict
from cortex.gateway.configcheck import NAMES, Files, prepare
from cortex.gateway.profiles import ProfileIndex
from cortex.plugins import Plugins

__all__ = ["LiveConfig", "Reloader"]

log = logging.getLogger("cortex.gateway")

#: Re-reads configuration for SIGHUP and POST /admin/reload; `cortex serve`'s runs the
#: whole check (cortex.gateway.configcheck.check_file), raising ConfigError.
Reloader = Callable[[], tuple[GatewayConfig, list[ModelProfile]]]


class LiveConfig:
    def __init__(self, config: GatewayConfig, profiles: Sequence[ModelProfile],
                 plugins: Plugins, *, reloader: Reloader | None = None,
                 files: Files = NAMES) -> None:
        self._plugins = plugins
        self._reloader = reloader
        self._files = files
        self._pins: dict[str, bool] = {}
        self._ttls: dict[str, float | None] = {}
        self._base_profiles = list(profiles)
        self._changed = asyncio.Event()
        self._on_reload: list[Callable[[GatewayConfig], None]] = []
        self.version = 0
        self.config = config
        # A keys file that lost its keys, or an unknown plugin, refuses the start.
        prepared = prepare(config, plugins, files=files)
        self.keys = prepared.keys
        self.profiles = ProfileIndex(self._base_profiles)
        self.router = prepared.router
        self.dialect_options: dict[str, Dialect.Options] = prepared.dialect_options

    @property
    def settings(self) -> GatewaySection:
        return self.config.gateway

    def on_reload(self, apply: Callable[[GatewayConfig], None]) -> None:
        """Have `apply` called with each reloaded config, before `reload()` returns."""
        self._on_reload.append(apply)

    def _change(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, since: int, timeout: float) -> None:
        """Return once `version` is past `since`, or after `timeout` seconds."""
        if self.version == since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def reload(self) -> str:
        """Re-read configuration and apply it; requests in flight carry on undisturbed."""
        if self._reloader is None:
            raise Conflict("this gateway runs an embedded configuration: nothing to reload")
        config, profiles = await asyncio.to_thread(self._reloader)
        # Keys read again: a keys file emptied or unreadable refuses the reload, and the
        # old keys stay in force (as everything else does when any of it is refused).
        prepared = await asyncio.to_thread(prepare, config, self._plugins, files=self._files)
        for key in ("listen", "metrics_listen"):
            if getattr(config.gateway, key) != getattr(self.config.gateway, key):
                log.warning("gateway.%s changed: restart the gateway to move it", key)
        self.config = config
        self.keys = prepared.keys
        prepared.keys.announce(config.gateway.listen)
        self._base_profiles = list(profiles)
        self.profiles = ProfileIndex(self._base_profiles, self._pins, self._ttls)
        self.router = prepared.router
        self.dialect_options = prepared.dialect_options
        for apply in self._on_reload:
            apply(config)
        self._change()
        summary = f"{len(config.neurons)} neurons, {len(profiles)} models"
        log.info("configuration reloaded: %s", summary)
        return summary

    def adopt_pin(self, model: str, pinned: bool) -> None:
        """Follow a pin set or cleared on a neuron (Fleet.on_pin): the neuron's flag is
        the fleet's one truth, so a replica that pinned a model stops reloading it once
        another unpins it, and one that sees a pin reloads the model if it is lost."""
        profile = self.profiles.get(model)
        if profile is not None and profile.pinned != pinned:
            log.info("model %s was %s on a neuron: following it", model,
                     "pinned" if pinned else "unpinned")
            self.set_pin(model, pinned)

    def set_pin(self, model: str, pinned: bool) -> ModelProfile:
        """Pin or unpin a profile in this gateway until it restarts (the admin API)."""
        profile = self.profiles.resolve(model)
        self._pins[profile.id] = pinned
        self.profiles = ProfileIndex(self._base_profiles, self._pins, self._ttls)
        self._change()
        return self.profiles.resolve(profile.id)

    def set_ttl(self, model: str, ttl: float | None) -> ModelProfile:
        """Set a profile's idle `ttl` in this gateway until it restarts (a client's
        keep-alive); None keeps it loaded."""
        profile = self.profiles.resolve(model)
        if profile.id not in self._ttls or self._ttls[profile.id] != ttl:  # once per change
            self._ttls[profile.id] = ttl
            self.profiles = ProfileIndex(self._base_profiles, self._pins, self._ttls)
            self._change()
        return self.profiles.resolve(profile.id)
