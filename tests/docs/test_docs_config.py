"""docs/configuration.md is generated from the config Structs: it must be current, and
every key of cortex.toml, models.toml and neuron.toml must be in it with a description."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from cortex import Plugins, build_plugin_manager
from cortex.config import GatewayConfig, ModelProfile, NeuronConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_generator()


def test_committed_doc_is_what_the_generator_writes(gen: ModuleType) -> None:
    text, missing = gen.generate()
    assert missing == [], f"describe these keys in scripts/gen_config_docs.py: {missing}"
    assert DOC.read_text() == text, "docs/configuration.md is stale: " \
                                    "run .venv/bin/python scripts/gen_config_docs.py"


def test_check_mode_passes_on_the_committed_doc() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _section(doc: str, file: str) -> str:
    """The part of the doc under `## file`."""
    match = re.search(rf"^## {re.escape(file)}\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert match, f"no `## {file}` section"
    return match.group(1)


def _keys(struct: type[Any]) -> list[str]:
    """Scalar keys of `struct` and of every table nested in it (independent of the script)."""
    keys: list[str] = []
    for f in msgspec.structs.fields(struct):
        inner = f.type
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            keys += _keys(inner)
        elif getattr(inner, "__origin__", None) is list and \
                isinstance(inner.__args__[0], type) and \
                issubclass(inner.__args__[0], msgspec.Struct):
            if inner.__args__[0] is not ModelProfile:
                keys += _keys(inner.__args__[0])
        else:
            keys.append(f.encode_name)
    return keys


@pytest.mark.parametrize(("file", "struct"), [
    ("cortex.toml", GatewayConfig), ("models.toml", ModelProfile),
    ("neuron.toml", NeuronConfig)])
def test_every_key_has_a_row_with_type_default_and_description(file: str,
                                                               struct: type[Any]) -> None:
    section = _section(DOC.read_text(), file)
    for key in _keys(struct):
        row = re.search(rf"^\| `{key}` \| ([^|]+) \| ([^|]*) \| ([^|]+) \|$", section, re.M)
        assert row, f"{file}: `{key}` has no row in docs/configuration.md"
        assert row.group(1).strip() and row.group(3).strip(), f"{file}: `{key}` row is empty"


def test_harness_options_are_documented_as_tables() -> None:
    section = _section(DOC.read_text(), "neuron.toml")
    for name, cls in Plugins(build_plugin_manager(entry_points=False)).harnesses.items():
        fields = msgspec.structs.fields(cls.Options)
        if fields:
            assert f"### `[harness.{name}]`" in section
        for f in fields:  # a key's row, or the heading of the table it holds
            assert f"| `{f.encode_name}` |" in section \
                or f"[harness.{name}.{f.encode_name}]" in section, f"[harness.{name}] {f.name}"


def test_an_undescribed_key_is_reported(gen: ModuleType) -> None:
    class Extra(msgspec.Struct, kw_only=True):
        listen: str = "x"
        brand_new: int = 3

    missing: list[str] = []
    sections = gen.walk(Extra, "top-level keys", missing=missing, seen={})
    assert missing == [f"{Extra.__qualname__}.listen", f"{Extra.__qualname__}.brand_new"]
    assert sections[0].rows[1][:3] == ("`brand_new`", "integer", "`3`")


def test_a_new_field_makes_the_committed_doc_stale(gen: ModuleType,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    class Grown(GatewayConfig, kw_only=True):
        shiny: bool = True

    monkeypatch.setitem(gen.DESCRIPTIONS, "test_a_new_field_makes_the_committed_doc_stale."
                        "<locals>.Grown.shiny", "a key the doc does not have yet")
    files = tuple((name, Grown if struct is GatewayConfig else struct, summary)
                  for name, struct, summary in gen.FILES)
    monkeypatch.setattr(gen, "FILES", files)
    text, _ = gen.generate()
    assert "| `shiny` | boolean | `true` |" in text
    assert text != DOC.read_text()
