"""A third-party plugin package, installed with pip, found through the `cortex` entry-point
group, selected by cortex.toml and applied by the gateway's own evictor."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import msgspec
import pytest

from cortex import FleetSnapshot, NodeView, Plugins, RouteRequest, build_plugin_manager
from cortex.config import load_gateway_config
from cortex.errors import ConfigError, PluginError
from cortex.gateway import create_app
from cortex.gateway.state import LiveConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "plugins" / "cortex-evict-largest"
FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30


def _offline_build_works() -> bool:
    """setuptools builds wheels by itself from 70.1; before that it needs `wheel`."""
    try:
        importlib.import_module("wheel")
        return True
    except ImportError:
        major, minor = (int(p) for p in version("setuptools").split(".")[:2])
        return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the example into a private target dir on sys.path (the venv is shared)."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    # pip builds a local directory in place; a copy keeps build/ and *.egg-info out of git.
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
               "--target", str(target), str(source)]
    if _offline_build_works():
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        importlib.invalidate_caches()
        yield target
    sys.modules.pop("cortex_evict_largest", None)


def small() -> NodeView:
    """node_full.json's node with `c` grown to 2 GiB and the budget full: sizes differ."""
    fleet = msgspec.json.decode((FIXTURES / "node_full.json").read_bytes(), type=FleetSnapshot)
    node = fleet.node("small")
    assert node is not None
    models = tuple(msgspec.structs.replace(m, bytes=2 * GiB) if m.id == "c" else m
                   for m in node.models)
    return msgspec.structs.replace(node, models=models, budget=5 * GiB)


def gateway_for(tmp_path: Path, eviction: str) -> LiveConfig:
    (tmp_path / "cortex.toml").write_text(
        f"{eviction}\n\n[[neurons]]\nname = \"small\"\nendpoint = \"http://127.0.0.1:9\"\n")
    config, profiles = load_gateway_config(tmp_path / "cortex.toml")
    live = create_app(config, build_plugin_manager(), profiles=profiles).state.live
    assert isinstance(live, LiveConfig)
    return live


def victims(gateway: LiveConfig, need: int) -> list[str]:
    chosen = gateway.router.evictor.victims(small(), need)
    assert chosen is not None
    return [m.id for m in chosen]


def test_installed_package_is_found_through_entry_points(installed: Path) -> None:
    pm = build_plugin_manager()
    plugin = pm.get_plugin("evict-largest")
    assert plugin is not None
    assert Path(plugin.__file__).is_relative_to(installed)  # the installed copy, not the tree
    cls = Plugins(pm).eviction_policy("largest-first")
    assert cls.__module__ == "cortex_evict_largest"
    # Blocking it by its entry-point name removes it again.
    blocked = Plugins(build_plugin_manager(blocked=["evict-largest"]))
    with pytest.raises(PluginError, match="unknown eviction policy `largest-first`"):
        blocked.eviction_policy("largest-first")


def test_config_selects_it_and_the_gateway_evicts_largest_first(installed: Path,
                                                                  tmp_path: Path) -> None:
    gateway = gateway_for(tmp_path, '[eviction]\nstrategy = "largest-first"')
    assert gateway.router.evictor.policy.name == "largest-first"
    assert victims(gateway, 1 * GiB) == ["c"]
    assert victims(gateway, 2 * GiB) == ["c"]
    assert victims(gateway, 3 * GiB) == ["c", "a"]
    lru = gateway_for(tmp_path, '[eviction]\nstrategy = "lru"')
    assert victims(lru, 2 * GiB) == ["a", "c"]  # the default takes two models


def test_the_router_plans_the_policys_victims(installed: Path, tmp_path: Path) -> None:
    gateway = gateway_for(tmp_path, '[eviction]\nstrategy = "largest-first"')
    decision = gateway.router.decide(RouteRequest(model="new", estimates={"small": 2 * GiB}),
                                     FleetSnapshot(nodes=(small(),)))
    assert (decision.action, decision.node, decision.victims) == ("load", "small", ("c",))


def test_its_options_come_from_the_eviction_options_table(installed: Path,
                                                         tmp_path: Path) -> None:
    gateway = gateway_for(tmp_path, '[eviction]\nstrategy = "largest-first"\n\n'
                                    '[eviction.options]\nstale_after = 60.0')
    # `c` is the largest but has been idle 0 s, `b` 30 s: both go after stale `a` (61 s).
    assert victims(gateway, 1 * GiB) == ["a"]
    with pytest.raises(ConfigError, match=r"eviction\.options"):
        gateway_for(tmp_path, '[eviction]\nstrategy = "largest-first"\n\n'
                              '[eviction.options]\nstale_afterr = 60.0')
