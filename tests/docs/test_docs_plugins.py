"""docs/plugins.md cannot drift from cortex/hookspecs.py: every hook is documented with
its exact signature, and every example in it runs against the real plugin machinery."""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import msgspec
import pytest

from cortex import (
    Evictor,
    FleetEvent,
    FleetSnapshot,
    NeuronConfig,
    NodeView,
    Plugins,
    RequestRecord,
    Router,
    RouteRequest,
    build_plugin_manager,
)
from cortex.config import GatewayConfig, ModelProfile
from cortex.errors import ConfigError
from cortex.gateway import create_app
from cortex.plugins import build_options

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "plugins.md").read_text()
FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30


def hookspecs() -> dict[str, str]:
    """Each hookspec's decorator and `def` line, as the doc must show them."""
    specs: dict[str, str] = {}
    for node in ast.parse((ROOT / "cortex" / "hookspecs.py").read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = [ast.unparse(d) for d in node.decorator_list]
        if not any(d.split("(")[0] == "hookspec" for d in decorators):
            continue
        node.decorator_list, node.body = [], [ast.Pass()]
        head = ast.unparse(node).splitlines()[0].removesuffix(":")
        specs[node.name] = "\n".join(f"@{d}" for d in decorators) + "\n" + head
    return specs


def sections(doc: str = DOC) -> dict[str, str]:
    """The doc's `### `hook`` sections under `## Hooks`."""
    hooks = doc.split("\n## Hooks\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### `(\w+)`\n", hooks, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def run_example(code: str, name: str) -> ModuleType:
    module = ModuleType(f"doc_example_{name}")
    exec(compile(code, f"docs/plugins.md:{name}", "exec"), module.__dict__)
    return module


def example(hook: str) -> ModuleType:
    """The hook section's example, executed as a module (its second code block)."""
    return run_example(blocks(sections()[hook])[1], hook)


def plugins_with(module: ModuleType) -> Plugins:
    plugins = Plugins(build_plugin_manager(entry_points=False, extra=[module]))
    plugins.validate()
    return plugins


def snapshot(name: str) -> FleetSnapshot:
    return msgspec.json.decode((FIXTURES / name).read_bytes(), type=FleetSnapshot)


def small() -> NodeView:
    """node_full.json's node with `c` grown to 2 GiB and the budget full: sizes differ."""
    node = snapshot("node_full.json").node("small")
    assert node is not None
    models = tuple(msgspec.structs.replace(m, bytes=2 * GiB) if m.id == "c" else m
                   for m in node.models)
    return msgspec.structs.replace(node, models=models, budget=5 * GiB)


# --- the contract ---------------------------------------------------------------------------

def problems(doc: str) -> list[str]:
    """What is wrong between `doc` and cortex/hookspecs.py; empty when they agree."""
    found: list[str] = []
    specs, documented = hookspecs(), sections(doc)
    found += [f"`{h}` is documented but is no hook" for h in sorted(set(documented) - set(specs))]
    for hook, signature in specs.items():
        section = documented.get(hook)
        if section is None:
            found.append(f"`{hook}` has no section")
            continue
        code = blocks(section)
        if len(code) < 2:
            found.append(f"`{hook}` needs a signature block and an example")
            continue
        if code[0].strip() != signature:
            found.append(f"`{hook}`: documented signature differs from cortex/hookspecs.py")
        if f"def {hook}(" not in code[1] or "@hookimpl" not in code[1]:
            found.append(f"`{hook}`: the example does not implement it")
        prose = re.sub(r"```python.*?```", "", section, flags=re.S)
        if "firstresult=True" in signature and "firstresult" not in prose:
            found.append(f"`{hook}`: the prose does not say it is firstresult")
    return found


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    assert len(hookspecs()) == 7
    assert problems(DOC) == []


def test_a_changed_signature_is_caught() -> None:
    changed = DOC.replace("def discover_gpus(config: NeuronConfig) -> Sequence[GPU] | None\n",
                          "def discover_gpus(config: NeuronConfig) -> list[GPU]\n")
    assert changed != DOC
    assert problems(changed) == [
        "`discover_gpus`: documented signature differs from cortex/hookspecs.py"]


def test_an_undocumented_or_unknown_hook_is_caught() -> None:
    renamed = DOC.replace("### `fleet_event`", "### `fleet_changed`")
    assert problems(renamed) == ["`fleet_changed` is documented but is no hook",
                                 "`fleet_event` has no section"]


# --- every example works ----------------------------------------------------------------------

def test_the_examples_import_only_the_public_api() -> None:
    """What the doc says a plugin may import is what its own examples import."""
    import cortex

    examples = [code for code in blocks(DOC) if not code.startswith("@hookspec")]
    assert len(examples) == 9
    for code in examples:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cortex"):
                assert node.module in ("cortex", "cortex.dialect"), ast.unparse(node)
                if node.module == "cortex":
                    assert {a.name for a in node.names} <= set(cortex.__all__), \
                        ast.unparse(node)


def test_every_example_registers_against_the_hookspecs() -> None:
    for hook in hookspecs():
        module = example(hook)
        pm = build_plugin_manager(entry_points=False, defaults=False, extra=[module])
        assert [impl.function.__name__ for impl in pm.hook.__dict__[hook].get_hookimpls()] \
            == [hook]  # pluggy checked its arguments against the spec on register


def test_options_example_is_validated_and_applied() -> None:
    module = run_example(blocks(DOC.split("\n## Options\n", 1)[1])[0], "options")
    cls = module.OldestExcept
    policy = cls(build_options(cls, {"keep": ["a"]}, where="cortex.toml: eviction.options"))
    assert [m.id for m in policy.order(Evictor.evictable(small()))] == ["c", "b"]
    with pytest.raises(ConfigError, match=r"eviction\.options"):
        build_options(cls, {"kep": ["a"]}, where="cortex.toml: eviction.options")


def test_routing_example_packs_where_affinity_spreads() -> None:
    plugins = plugins_with(example("register_routing_strategies"))
    lru = Evictor(plugins.eviction_policy("lru")())
    request = RouteRequest(model="new", estimates={"gpu-a": 2 * GiB, "gpu-b": 2 * GiB})
    fleet = snapshot("fleet_mixed.json")
    pack = Router(plugins.routing_strategy("pack")(), lru).decide(request, fleet)
    spread = Router(plugins.routing_strategy("affinity")(), lru).decide(request, fleet)
    assert (pack.action, pack.node) == ("load", "gpu-b")  # 4 GiB free: fuller
    assert (spread.action, spread.node) == ("load", "gpu-a")


def test_eviction_example_takes_the_largest_first() -> None:
    plugins = plugins_with(example("register_eviction_policies"))
    largest = Evictor(plugins.eviction_policy("largest-first")())
    assert [m.id for m in largest.victims(small(), 2 * GiB) or ()] == ["c"]
    lru = Evictor(plugins.eviction_policy("lru")())
    assert [m.id for m in lru.victims(small(), 2 * GiB) or ()] == ["a", "c"]


@pytest.mark.anyio
async def test_dialect_example_is_mounted_by_the_gateway() -> None:
    app = create_app(GatewayConfig(), build_plugin_manager(
        entry_points=False, extra=[example("register_dialects")]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://localhost") as client:
        listed = await client.get("/api/v0/models")
        missing = await client.get("/api/v0/nothing")
        document = (await client.get("/openapi.json")).json()
    assert listed.status_code == 200 and listed.json() == {"object": "list", "data": []}
    assert missing.status_code == 404
    # Its own operation is in the document, tagged with its name, beside the defaults'.
    assert document["paths"]["/api/v0/models"]["get"]["tags"] == ["lmstudio-models"]
    assert document["paths"]["/v1/messages"]["post"]["tags"] == ["anthropic"]


@pytest.mark.anyio
async def test_harness_example_serves_through_a_real_neuron_app(tmp_path: Path) -> None:
    from cortex_neuron.app import create_app as create_neuron

    (tmp_path / "echo.bin").write_bytes(b"x" * 1000)
    config = NeuronConfig(model_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "cache"),
                          memory_budget="1GiB", overhead_bytes=24)
    app = create_neuron(config, plugins_with(example("register_harnesses")))
    profile = ModelProfile(id="echo", source=str(tmp_path / "echo.bin"), harness="echo")
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://neuron") as client:
        loaded = await client.post("/models/load", json={"profile": msgspec.to_builtins(profile)})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["estimate"]["total"] == 1024
        reply = await client.post("/v1/completions", json={
            "model": "echo", "prompt": "one two three", "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == "two three "
        assert reply.json()["usage"]["completion_tokens"] == 2
        chat = await client.post("/v1/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": "hi there"}]})
        assert chat.json()["choices"][0]["message"]["content"] == "hi there "


@pytest.fixture
def no_declared_gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("CORTEX_GPUS", raising=False)
    yield monkeypatch


def test_gpu_example_reports_declared_gpus_before_nvml(
        no_declared_gpus: pytest.MonkeyPatch) -> None:
    from cortex_neuron.hardware import Hardware

    pm = build_plugin_manager(entry_points=False, extra=[example("discover_gpus")])
    no_declared_gpus.setenv("CORTEX_GPUS", "NVIDIA L4:24GiB,NVIDIA L4:24GiB")
    hardware = Hardware(NeuronConfig(memory_headroom="1GiB"), pm.hook)
    assert [(g.index, g.name, g.memory_total) for g in hardware.gpus()] == [
        (0, "NVIDIA L4", 24 * GiB), (1, "NVIDIA L4", 24 * GiB)]
    assert not hardware.cpu_only and hardware.budget_bytes == 47 * GiB


def test_gpu_example_defers_to_nvml_when_nothing_is_declared(
        no_declared_gpus: pytest.MonkeyPatch) -> None:
    module = example("discover_gpus")
    assert module.discover_gpus(NeuronConfig()) is None
    pm = build_plugin_manager(entry_points=False, extra=[module])
    assert pm.hook.discover_gpus(config=NeuronConfig()) is not None  # NVML's answer


def test_observer_examples_log(caplog: pytest.LogCaptureFixture) -> None:
    pm = build_plugin_manager(entry_points=False, defaults=False, extra=[
        example("request_finished"), example("fleet_event")])
    caplog.set_level(logging.INFO)
    pm.hook.request_finished(record=RequestRecord(
        request_id="r1", model="gemma3-270m", node="gpu-a", dialect="openai", status=200,
        stream=True, completion_tokens=7))
    pm.hook.fleet_event(event=FleetEvent(kind="node_down", node="gpu-b", reason="refused"))
    pm.hook.fleet_event(event=FleetEvent(kind="loaded", node="gpu-a", model="m"))
    access = [r for r in caplog.records if r.name == "cortex.access"]
    assert len(access) == 1 and msgspec.json.decode(access[0].getMessage())["model"] \
        == "gemma3-270m"
    alerts = [r.getMessage() for r in caplog.records if r.name == "cortex.alerts"]
    assert alerts == ["node_down on gpu-b: refused"]
