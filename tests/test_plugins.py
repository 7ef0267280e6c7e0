"""The plugin manager: defaults, entry points, duplicate names, blocking."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from cortex import Harness, Plugins, build_plugin_manager, hookimpl
from cortex.errors import PluginError
from cortex.plugins import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parent.parent


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


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_core_imports_neither_neuron_nor_plugins() -> None:
    assert not _imports("cortex") & {"cortex_neuron", "cortex_plugins", "llama_cpp", "pynvml",
                                     "huggingface_hub"}


def test_default_plugins_use_only_the_public_api() -> None:
    for path in (ROOT / "cortex_plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module != "cortex_neuron", path
    assert all(name.startswith("cortex_plugins.") for name in DEFAULT_PLUGINS)
