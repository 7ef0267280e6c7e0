"""Plugin manager factory and the name-keyed registries built from `register_*` hooks.

A fresh manager is built per app (and per test): there is no module-global one.
Default plugins are ordinary modules named in DEFAULT_PLUGINS and loaded by the same
path as third-party plugins, which come from the `cortex` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import msgspec
import pluggy

from cortex import hookspecs
from cortex.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from cortex.dialect import Dialect
    from cortex.evictor import EvictionPolicy
    from cortex.harness import Harness
    from cortex.router import RoutingStrategy

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Plugins",
    "build_options",
    "build_plugin_manager",
]

ENTRY_POINT_GROUP = "cortex"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "cortex_plugins.llamacpp",
    "cortex_plugins.synthetic",
    "cortex_plugins.nvml",
    "cortex_plugins.routing",
    "cortex_plugins.eviction",
    "cortex_plugins.openai",
    "cortex_plugins.anthropic",
    "cortex_plugins.observers",
)


class _Named(Protocol):
    name: ClassVar[str]


N = TypeVar("N", bound=_Named)


def build_plugin_manager(*, entry_points: bool = True, defaults: bool = True,
                         blocked: Sequence[str] = (), extra: Iterable[object] = ()
                         ) -> pluggy.PluginManager:
    """Build a manager with the default plugins, entry-point plugins and `extra` objects.

    `blocked` names plugins (a DEFAULT_PLUGINS module name or an entry-point name) to skip.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    if defaults:
        for module_name in DEFAULT_PLUGINS:
            if pm.is_blocked(module_name):
                continue
            pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    return pm


def _collect(batches: Iterable[Iterable[type[N]]], kind: str) -> dict[str, type[N]]:
    registry: dict[str, type[N]] = {}
    for batch in batches:
        for cls in batch:
            name = cls.name
            if name in registry:
                first = registry[name]
                raise PluginError(
                    f"two {kind} plugins are named `{name}`: {first.__module__}."
                    f"{first.__qualname__} and {cls.__module__}.{cls.__qualname__}")
            registry[name] = cls
    return registry


def _pick(registry: dict[str, type[N]], name: str, kind: str) -> type[N]:
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry)) or "none"
        raise PluginError(f"unknown {kind} `{name}` (available: {known})") from None


def build_options(cls: type[Any], raw: dict[str, Any], *, where: str) -> Any:
    """Validate a plugin's settings against its inner `Options` Struct."""
    options_type = getattr(cls, "Options", None)
    if options_type is None:
        if raw:
            raise ConfigError(f"{where}: `{cls.name}` takes no options")
        return None
    try:
        return msgspec.convert(raw, options_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class Plugins:
    """The registries of one plugin manager; building them rejects duplicate names."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @cached_property
    def routing_strategies(self) -> dict[str, type[RoutingStrategy]]:
        return _collect(self.pm.hook.register_routing_strategies(), "routing strategy")

    @cached_property
    def eviction_policies(self) -> dict[str, type[EvictionPolicy]]:
        return _collect(self.pm.hook.register_eviction_policies(), "eviction policy")

    @cached_property
    def dialects(self) -> dict[str, type[Dialect]]:
        return _collect(self.pm.hook.register_dialects(), "dialect")

    @cached_property
    def harnesses(self) -> dict[str, type[Harness]]:
        return _collect(self.pm.hook.register_harnesses(), "harness")

    def validate(self) -> None:
        """Build every registry now, so duplicate names fail at start-up."""
        for attr in ("routing_strategies", "eviction_policies", "dialects", "harnesses"):
            getattr(self, attr)

    def routing_strategy(self, name: str) -> type[RoutingStrategy]:
        return _pick(self.routing_strategies, name, "routing strategy")

    def eviction_policy(self, name: str) -> type[EvictionPolicy]:
        return _pick(self.eviction_policies, name, "eviction policy")

    def harness(self, name: str) -> type[Harness]:
        return _pick(self.harnesses, name, "harness")
