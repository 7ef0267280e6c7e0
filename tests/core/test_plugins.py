"""The plugin manager: defaults, entry points, duplicate names, blocking, options."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cortex import (
    ConfigError,
    GatewayConfig,
    Harness,
    Plugins,
    build_plugin_manager,
    hookimpl,
    load_gateway_config,
)
from cortex.errors import PluginError
from cortex.gateway import create_app
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


def test_dialect_options_come_from_their_tables(tmp_path: Path) -> None:
    """`[dialects.NAME]` is validated against the dialect's Options like any plugin's;
    a dialect without a table gets its defaults."""
    plugins = Plugins(build_plugin_manager(entry_points=False))
    path = tmp_path / "cortex.toml"
    path.write_text("[dialects.anthropic]\nmatch_stops = false\n")
    config, _ = load_gateway_config(path)
    options = plugins.dialect_options(config.dialects)
    assert set(options) == {"anthropic", "ollama", "openai", "responses"}
    assert options["anthropic"].match_stops is False  # type: ignore[attr-defined]
    assert plugins.dialect_options({})["anthropic"].match_stops is True  # type: ignore[attr-defined]


@pytest.mark.parametrize("tables, message", [
    ({"anthropc": {}}, r"cortex.toml: dialects.anthropc: no dialect is named `anthropc` "
                       r"\(did you mean `anthropic`\?\) "
                       r"\(available: anthropic, ollama, openai, responses\)"),
    ({"anthropic": {"match_stop": False}}, r"cortex.toml: dialects.anthropic: .*match_stop"),
    ({"anthropic": {"match_stops": "no"}}, r"cortex.toml: dialects.anthropic: Expected `bool`"),
    ({"openai": {"anything": 1}}, r"cortex.toml: dialects.openai: .*anything"),
])
def test_a_bad_dialect_table_stops_the_gateway_at_start_up(tables: dict[str, Any],
                                                           message: str) -> None:
    config = msgspec.convert({"dialects": tables}, GatewayConfig)
    with pytest.raises(ConfigError, match=message):
        create_app(config, build_plugin_manager(entry_points=False))
