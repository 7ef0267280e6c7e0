"""Alias patterns: `claude-*` and the like resolve names no profile spells out, after
exact names, most specific first; the configuration refuses ambiguous ones; listings
never offer a pattern as a model."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import msgspec
import pytest

from cortex.aliases import overlap
from cortex.config import ModelProfile, load_gateway_config
from cortex.defaults import BUNDLED_GEMMA
from cortex.errors import ConfigError, ModelNotFound
from cortex.gateway.catalogue import build_catalogue
from cortex.gateway.profiles import ProfileIndex
from cortex.snapshot import FleetSnapshot

from ..conftest import NeuronProcess
from ..gateway_support import reset, running_gateway


def _profile(model_id: str, *aliases: str) -> ModelProfile:
    return ModelProfile(id=model_id, source="synthetic:", harness="synthetic",
                        aliases=list(aliases))


INDEX = ProfileIndex([
    _profile("big", "claude-*"),
    _profile("small", "claude-haiku-*", "claude-?-haiku"),
    _profile("exact", "claude-haiku-4-5"),
    _profile("any", "*"),
])


@pytest.mark.parametrize(("name", "model_id"), [
    ("claude-opus-4-8", "big"),
    ("claude-sonnet-4-6", "big"),
    ("claude-haiku-4-6", "small"),  # the more specific pattern
    ("claude-3-haiku", "small"),
    ("claude-haiku-4-5", "exact"),  # an exact alias beats every pattern
    ("big", "big"),
    ("gpt-4o", "any"),
])
def test_a_name_resolves_exactly_first_then_to_the_most_specific_pattern(
        name: str, model_id: str) -> None:
    assert INDEX.resolve(name).id == model_id


def test_without_a_match_a_name_is_not_found() -> None:
    index = ProfileIndex([_profile("big", "claude-*")])
    with pytest.raises(ModelNotFound):
        index.resolve("gpt-4o")
    with pytest.raises(ModelNotFound):
        index.resolve("claude")  # `*` needs the dash before it
    assert index.get("claude-*") is None  # a pattern is no id


@pytest.mark.parametrize(("a", "b", "joint"), [
    ("claude-*", "*-4-6", True),  # claude-x-4-6
    ("a*", "*b", True),
    ("claude-*", "gpt-*", False),
    ("claude-?", "claude-??*", False),
    ("*x*", "*y*", True),
    ("a?c", "ab?", True),
    ("a?c", "abd", False),
])
def test_pattern_overlap(a: str, b: str, joint: bool) -> None:
    assert overlap(a, b) is joint and overlap(b, a) is joint


def _config(tmp_path: Path, models: list[dict[str, object]]) -> Path:
    path = tmp_path / "cortex.toml"
    path.write_bytes(msgspec.toml.encode({"models": models, "neurons": []}))
    return path


def _model(model_id: str, *aliases: str) -> dict[str, object]:
    return {"id": model_id, "source": "synthetic:", "harness": "synthetic",
            "aliases": list(aliases)}


@pytest.mark.parametrize(("models", "words"), [
    ([_model("a", "claude-*"), _model("b", "*-sonnet")], "equally specific"),
    ([_model("a", "x?z"), _model("b", "?yz")], "equally specific"),
    ([_model("a", "claude-[ab]*")], "character classes"),
    ([_model("a", "claude-*"), _model("b", "claude-*")], "already used"),
])
def test_ambiguous_or_unsupported_patterns_are_refused(
        tmp_path: Path, models: list[dict[str, object]], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_gateway_config(_config(tmp_path, models))


def test_patterns_that_cannot_collide_are_accepted(tmp_path: Path) -> None:
    _, profiles = load_gateway_config(_config(tmp_path, [
        _model("a", "claude-*", "c?"), _model("b", "claude-haiku-*", "gpt-*"),
        _model("c", "claude-sonnet-*")]))
    assert [p.id for p in profiles] == ["a", "b", "c"]


def test_the_catalogue_lists_no_pattern() -> None:
    entries = build_catalogue(ProfileIndex([BUNDLED_GEMMA]), FleetSnapshot(nodes=[]))
    assert entries == []  # no live node: nothing is servable
    assert "claude-*" in BUNDLED_GEMMA.aliases


@pytest.mark.model
@pytest.mark.anyio
async def test_claude_code_s_model_names_reach_the_bundled_profile(
        tmp_path_factory: pytest.TempPathFactory, gemma_path: Path, cache_dir: Path) -> None:
    """The bundled profile as shipped (its `claude-*`), through a gateway, asked for by
    the Anthropic SDK under this release's and tomorrow's names."""
    neuron = NeuronProcess({"name": "a", "cache_dir": str(cache_dir)},
                           tmp_path_factory.mktemp("patterns"))
    try:
        neuron.wait_ready()
        reset(neuron)
        bundled = msgspec.structs.replace(BUNDLED_GEMMA, n_ctx=4096, slots=1)
        async with running_gateway([("a", neuron)], [bundled]) as gw, \
                anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0) as sdk:
            for name in ("claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-5-0"):
                reply = await sdk.messages.create(
                    model=name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
                assert reply.usage.output_tokens >= 1
            # The request log names the profile each name resolved to.
            assert [r.model for r in gw.recorder.records] == ["gemma3-270m"] * 3
            listed = [m.id async for m in sdk.models.list()]
            assert "gemma3-270m" in listed and "gemma-3-270m" in listed
            assert not any("*" in name for name in listed)
            async with httpx.AsyncClient(base_url=gw.url) as plain:
                openai_ids = [m["id"] for m in (await plain.get("/v1/models")).json()["data"]]
            assert openai_ids == ["gemma3-270m"]
            with pytest.raises(anthropic.NotFoundError):
                await sdk.messages.create(model="gpt-4o", max_tokens=4,
                                          messages=[{"role": "user", "content": "Hi"}])
    finally:
        neuron.stop()


def test_ollamas_latest_tag_names_the_untagged_model() -> None:
    """`gemma:latest` (what Ollama's clients say) is `gemma`, unless a name has the tag
    whole; the tag does not extend to patterns or other tags."""
    index = ProfileIndex([_profile("gemma", "g"), _profile("pinned", "g:latest")])
    assert index.resolve("gemma:latest").id == "gemma"
    assert index.resolve("g:latest").id == "pinned"  # the exact name wins
    with pytest.raises(ModelNotFound):
        index.resolve("gemma:2b")
    with pytest.raises(ModelNotFound):
        ProfileIndex([_profile("big", "claude-*")]).resolve("claude:latest")
