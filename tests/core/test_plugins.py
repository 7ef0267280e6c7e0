"""The plugin manager: defaults, entry points, duplicate names, blocking."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cortex import Harness, Plugins, build_plugin_manager, hookimpl
from cortex.errors import PluginError
from cortex.plugins import default_plugins


def test_defaults_register_the_llamacpp_harness() -> None:
    plugins = Plugins(build_plugin_manager(entry_points=False))
    assert "llamacpp" in plugins.harnesses
    assert plugins.harness("llamacpp").name == "llamacpp"


def test_duplicate_names_fail_at_start_up() -> None:
    class Impostor(Harness):
        name = "llamacpp"

    class Plugin:
        @hookimpl
        def register_harnesses(self) -> Iterable[type[Harness]]:
            return [Impostor]

    plugins = Plugins(build_plugin_manager(entry_points=False, extra=[Plugin()]))
    with pytest.raises(PluginError, match="two harness plugins are named `llamacpp`"):
        plugins.validate()


def test_unknown_name_lists_what_exists() -> None:
    plugins = Plugins(build_plugin_manager(entry_points=False))
    with pytest.raises(PluginError, match=r"unknown harness `vllm` \(available: .*llamacpp"):
        plugins.harness("vllm")


def test_a_default_can_be_blocked() -> None:
    pm = build_plugin_manager(entry_points=False, blocked=["cortex_plugins.llamacpp"])
    assert "llamacpp" not in Plugins(pm).harnesses


def test_each_app_gets_its_own_manager() -> None:
    assert build_plugin_manager(entry_points=False) is not build_plugin_manager(
        entry_points=False)


def test_the_defaults_are_this_distributions_entry_points() -> None:
    names = default_plugins()
    assert "cortex_plugins.llamacpp" in names and "cortex_plugins.openai" in names
    assert all(name.startswith("cortex_plugins.") for name in names)
    pm = build_plugin_manager(entry_points=False)
    assert {name for name, _ in pm.list_name_plugin()} >= set(names)
    assert not set(names) & {name for name, _ in
                             build_plugin_manager(defaults=False).list_name_plugin()}
