"""deploy/container: docker and podman cannot run here, so the Containerfiles are read:
every COPY source exists, every variable is declared, the neuron's CUDA build takes the
RPM's GPU generations (rpm/cortex.spec, %{backends}) with the same CMake flags, the
ports are the config defaults, health checks answer on the real apps, and the images
start the commands the Kubernetes manifests run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from cortex import NeuronConfig, Plugins, build_plugin_manager
from cortex.config import GatewayConfig, GatewaySection, split_listen
from cortex.gateway.app import create_app as gateway_app
from cortex_neuron import create_app as neuron_app

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "deploy" / "container"
BASE = ROOT / "deploy" / "kubernetes" / "base"
SPEC = (ROOT / "rpm" / "cortex.spec").read_text()

Instruction = tuple[str, str]


def instructions(path: Path) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuations joined."""
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith(
            "\\") else line
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
            pending = ""
    assert not pending, f"{path.name}: a continuation runs off the end"
    return found


def args(instruction: str, parsed: list[Instruction]) -> list[str]:
    return [rest for keyword, rest in parsed if keyword == instruction]


def exec_form(rest: str) -> list[str]:
    value = yaml.safe_load(rest)  # a JSON array is YAML
    assert isinstance(value, list), rest
    return [str(v) for v in value]


def backends() -> dict[str, str]:
    """rpm/cortex.spec's %{backends}: {generation: CUDA architecture}, the GPU ones."""
    match = re.search(r"^%global backends (.+)$", SPEC, re.M)
    assert match, "rpm/cortex.spec defines no %{backends}"
    pairs = dict(item.split(":", 1) for item in match.group(1).split())
    return {name: arch for name, arch in pairs.items() if not arch.startswith("-D")}


def k8s_command(file: str) -> list[str]:
    for document in yaml.safe_load_all((BASE / file).read_text()):
        [container] = document["spec"]["template"]["spec"]["containers"]
        return [str(c) for c in container["command"]]
    raise AssertionError(file)


@pytest.fixture(scope="module")
def gateway() -> list[Instruction]:
    return instructions(CONTAINERS / "Containerfile.gateway")


@pytest.fixture(scope="module")
def neuron() -> list[Instruction]:
    return instructions(CONTAINERS / "Containerfile.neuron")


@pytest.mark.parametrize("name", ["Containerfile.gateway", "Containerfile.neuron"])
def test_every_copy_source_exists_and_every_variable_is_declared(name: str) -> None:
    parsed = instructions(CONTAINERS / name)
    copies = [shlex.split(rest) for rest in args("COPY", parsed)]
    assert copies
    for words in copies:
        if any(w.startswith("--from=") for w in words):
            continue
        for source in [w for w in words if not w.startswith("--")][:-1]:
            assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the repository"
    # ARGs before the first FROM serve FROM lines; a stage sees its own ARGs and ENVs.
    global_args: set[str] = set()
    stage: set[str] | None = None
    for keyword, rest in parsed:
        if keyword in ("ARG", "ENV"):
            names = {item.split("=", 1)[0] for item in shlex.split(rest)}
            (global_args if stage is None else stage).update(names)
        known = global_args if keyword == "FROM" else (stage or set())
        for used in re.findall(r"\$\{(\w+)\}", rest):
            assert used in known, f"{name}: {keyword} {rest}: ${{{used}}} is not declared"
        if keyword == "FROM":
            stage = set()


def test_the_gateway_image_holds_the_gateway_only(gateway: list[Instruction]) -> None:
    assert args("FROM", gateway)[0].endswith("python:3.11-slim")
    [install] = [r for r in args("RUN", gateway) if "pip install" in r]
    assert re.search(r"pip install (--\S+ )*\.( |$)", install), install
    assert "[neuron]" not in install and "llama" not in install
    exposed = {int(p) for rest in args("EXPOSE", gateway) for p in rest.split()}
    section = GatewaySection()
    assert exposed == {split_listen(section.listen)[1], split_listen(section.metrics_listen)[1]}
    [user] = args("USER", gateway)
    assert user.split(":")[0] not in ("root", "0")
    entry = exec_form(args("ENTRYPOINT", gateway)[-1]) + exec_form(args("CMD", gateway)[-1])
    assert entry == k8s_command("gateway-deployment.yaml")


def test_the_neuron_image_builds_llama_cpp_for_the_rpms_gpu_generations(
        neuron: list[Instruction]) -> None:
    froms = args("FROM", neuron)
    assert len(froms) == 2, froms
    assert re.fullmatch(r"\S*nvidia/cuda:\$\{CUDA_VERSION\}-devel-\$\{UBUNTU\} AS build",
                        froms[0])
    assert re.fullmatch(r"\S*nvidia/cuda:\$\{CUDA_VERSION\}-runtime-\$\{UBUNTU\}", froms[1])
    [arch_arg] = [r for r in args("ARG", neuron) if r.startswith("CUDA_ARCHITECTURES=")]
    generations = backends()
    assert arch_arg.split("=", 1)[1] in generations.values()
    # The spec's CMake flags for a GPU backend, with the build argument for its arch.
    spec_flags = re.search(r'args="(-DGGML_CUDA=on [^"]*\$arch)"', SPEC)
    assert spec_flags, "rpm/cortex.spec builds no CUDA backend"
    flags = spec_flags.group(1).replace("$arch", "${CUDA_ARCHITECTURES}")
    [build] = [r for r in args("RUN", neuron) if "CMAKE_ARGS=" in r]
    assert f'CMAKE_ARGS="{flags}"' in build
    assert "--no-binary llama-cpp-python" in build and '".[neuron]"' in build
    # The comment that tells people which number is which names the spec's pairs.
    text = (CONTAINERS / "Containerfile.neuron").read_text()
    listed = re.search(r"^#\s+((?:\w+ \d+, )*\w+ \d+)$", text, re.M)
    assert listed and dict(p.split() for p in listed.group(1).split(", ")) == generations


def test_the_neuron_image_serves_the_neuron_as_its_manifest_runs_it(
        neuron: list[Instruction]) -> None:
    exposed = {int(p) for rest in args("EXPOSE", neuron) for p in rest.split()}
    assert exposed == {split_listen(NeuronConfig().listen)[1]}
    [user] = args("USER", neuron)
    assert user.split(":")[0] not in ("root", "0")
    entry = exec_form(args("ENTRYPOINT", neuron)[-1])
    assert entry == k8s_command("neuron-daemonset.yaml")[:1]


def test_the_llama_cpp_pins_agree() -> None:
    # The RPM pins llama-cpp-python itself; the image takes the `neuron` extra's pin.
    spec = re.search(r"^%global llama_version (\S+)$", SPEC, re.M)
    pyproject = re.search(r'"llama-cpp-python==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert spec and pyproject and spec.group(1) == pyproject.group(1)


def healthcheck_url(parsed: list[Instruction]) -> tuple[int, str]:
    [check] = args("HEALTHCHECK", parsed)
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"]*)", check)
    assert match, check
    return int(match.group(1)), match.group(2)


def test_the_health_checks_answer_on_the_real_apps(gateway: list[Instruction],
                                                   neuron: list[Instruction]) -> None:
    port, path = healthcheck_url(gateway)
    assert port == split_listen(GatewaySection().listen)[1]
    with TestClient(gateway_app(GatewayConfig(), build_plugin_manager())) as client:
        assert client.get(path).status_code == 200
    port, path = healthcheck_url(neuron)
    assert port == split_listen(NeuronConfig().listen)[1]
    app = neuron_app(NeuronConfig(secret="s"), Plugins(build_plugin_manager()))
    with TestClient(app) as client:
        assert client.get(path).status_code == 200
