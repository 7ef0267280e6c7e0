"""The gateway's docs and examples cannot drift from the code: every config key, route
and command must appear in them, and the examples must load."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from starlette.routing import Route

from cortex import Plugins, build_plugin_manager
from cortex.cli import main
from cortex.config import (
    AuthConfig,
    DiscoveryConfig,
    EvictionConfig,
    GatewayConfig,
    GatewaySection,
    ModelProfile,
    NeuronEntry,
    RoutingConfig,
    load_gateway_config,
)
from cortex.gateway import create_app

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "gateway.md").read_text()
CORTEX_EXAMPLE = ROOT / "examples" / "cortex.example.toml"
MODELS_EXAMPLE = ROOT / "examples" / "models.example.toml"

SECTIONS = {"gateway": GatewaySection, "eviction": EvictionConfig, "routing": RoutingConfig,
            "neurons": NeuronEntry, "auth": AuthConfig, "discovery": DiscoveryConfig}


def fields(kind: type[msgspec.Struct]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(kind)]


def test_the_examples_load() -> None:
    config, profiles = load_gateway_config(CORTEX_EXAMPLE)
    assert len(config.neurons) == 2 and len(profiles) == 3


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_cortex_toml_key_is_in_the_example_and_the_doc(section: str) -> None:
    example = CORTEX_EXAMPLE.read_text()
    assert re.search(rf"^\[+{section}\]+", example, re.M), section
    for key in fields(SECTIONS[section]):
        assert re.search(rf"^(#? ?{key} = |\[{section}\.{key}\])", example, re.M), \
            f"{section}.{key} not in example"
        assert f"`{key}`" in DOC or f".{key}]`" in DOC or f"] {key}`" in DOC or f", {key}`" in DOC \
            or f"`{key}," in DOC, f"{section}.{key} not in docs/gateway.md"
    assert set(fields(GatewayConfig)) == {*SECTIONS, "models", "dialects"}


def test_every_dialect_option_is_in_the_example_and_the_doc() -> None:
    """`[dialects.NAME]` tables hold plugins' Options: each default dialect's keys."""
    example = CORTEX_EXAMPLE.read_text()
    dialects = Plugins(build_plugin_manager(entry_points=False)).dialects
    with_options = {name: cls for name, cls in dialects.items()
                    if msgspec.structs.fields(cls.Options)}
    assert "anthropic" in with_options
    for name, cls in with_options.items():
        table = example.split(f"\n[dialects.{name}]\n", 1)[1].split("\n[", 1)[0]
        for key in fields(cls.Options):
            assert re.search(rf"^#? ?{key} = ", table, re.M), f"dialects.{name}.{key}"
            assert f"`[dialects.{name}] {key}`" in DOC, f"dialects.{name}.{key} not in the doc"


def test_every_discovery_option_is_in_the_example_and_the_doc() -> None:
    """`[discovery.options]` holds the chosen source's Options: each default source's keys."""
    table = CORTEX_EXAMPLE.read_text().split("\n[discovery.options]", 1)[1].split("\n[", 1)[0]
    discovery = DOC.split("\n### Discovery\n", 1)[1].split("\n### ", 1)[0]
    sources = Plugins(build_plugin_manager(entry_points=False)).discovery_sources
    assert {"dns", "file"} <= set(sources)
    for name, cls in sources.items():
        assert f"`{name}`" in discovery, name
        for key in fields(cls.Options):
            assert re.search(rf"^#? ?{key} = ", table, re.M), f"{name} option {key}"
            assert f"`{key}`" in discovery, f"{name} option {key} not in the doc"


def test_every_profile_key_is_in_the_example_and_the_doc() -> None:
    example = MODELS_EXAMPLE.read_text()
    for key in fields(ModelProfile):
        assert re.search(rf"^#? ?{key} = ", example, re.M), f"{key} not in example"
        assert f"`{key}`" in DOC or f"`{key}," in DOC or f" `{key}`" in DOC \
            or f", `{key}`" in DOC, f"{key} not in docs/gateway.md"


def test_every_route_is_documented() -> None:
    app = create_app(GatewayConfig(), build_plugin_manager(entry_points=False))
    paths = [r.path for r in app.routes if isinstance(r, Route)]
    assert "/v1/chat/completions" in paths
    for path in paths:
        documented = path.replace("{model:path}/{action}", "{id}/").replace(
            "{model:path}", "{id}").replace("{name}/{action}", "{name}/")
        assert documented in DOC, f"{path} is not in docs/gateway.md"


def test_every_neuron_route_is_documented() -> None:
    from cortex_neuron.app import create_app as neuron_app

    doc = (ROOT / "docs" / "neuron.md").read_text()
    for route in neuron_app().routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method == "HEAD":
                continue
            heading = f"`{method} {route.path}`"
            assert heading in doc, f"{heading} is not in docs/neuron.md"


def test_every_command_is_documented() -> None:
    for name in main.commands:
        assert f"cortex {name}" in DOC, f"`cortex {name}` is not in docs/gateway.md"
