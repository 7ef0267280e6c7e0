"""deploy/kubernetes: every kustomization renders with `kubectl kustomize`, validates
against the Kubernetes schemas offline (kubernetes-validate ships them), and agrees with
the code: probes answer on the real apps without credentials, ports are the config
defaults, the configs load with cortex's own loaders and name files the pods mount,
the discovery name is the headless Service's SRV name, and the neuron's preStop hook is
a real `neuron drain` that the grace period outlasts."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml
from click.testing import CliRunner
from starlette.testclient import TestClient

from cortex import NeuronConfig, Plugins, build_plugin_manager, load_neuron_config
from cortex.cli import main as cortex_cli
from cortex.config import (
    AuthConfig,
    GatewayConfig,
    GatewaySection,
    load_gateway_config,
    split_listen,
)
from cortex.gateway.app import create_app as gateway_app
from cortex_neuron import create_app as neuron_app
from cortex_neuron.cli import GRACEFUL_TIMEOUT
from cortex_neuron.cli import main as neuron_cli

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
# Every kustomization: the top level (the base) and each overlay, found, not listed.
KUSTOMIZATIONS = [KUBERNETES, *sorted(p.parent for p in (KUBERNETES / "overlays").glob(
    "*/kustomization.yaml"))]
# The oldest Kubernetes docs/deploy.md supports, and the newest kubernetes-validate knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# The ServiceMonitor CRD is not in Kubernetes' schemas: this is the part of the Prometheus
# operator's monitoring.coreos.com/v1 schema that the overlay uses, closed to other keys.
_SECRET_KEY = {"type": "object", "required": ["name", "key"], "additionalProperties": False,
               "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                        "scheme": {"enum": ["http", "https"]},
                        "authorization": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"type": {"type": "string"},
                                           "credentials": _SECRET_KEY}}}}}}}}}

Resource = dict[str, Any]


def render(directory: Path) -> list[Resource]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render deploy/kubernetes (needs "
                    "kubectl 1.27 or later, whose kustomize is v5)")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [r for r in yaml.safe_load_all(result.stdout) if r]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS,
                ids=[str(k.relative_to(KUBERNETES)) for k in KUSTOMIZATIONS])
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return render(request.param)


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return render(KUBERNETES)


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def containers(resources: list[Resource]) -> Iterator[tuple[Resource, Resource]]:
    """(workload, container) for every container of every pod template."""
    for r in resources:
        if r["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            for c in r["spec"]["template"]["spec"]["containers"]:
                yield r, c


def by_command(resources: list[Resource], program: str) -> tuple[Resource, Resource]:
    [found] = [(w, c) for w, c in containers(resources) if c["command"][0] == program]
    return found


def config_file(resources: list[Resource], name: str) -> str:
    """A file of a generated ConfigMap (its name carries a hash suffix)."""
    [text] = [r["data"][name] for r in resources
              if r["kind"] == "ConfigMap" and name in r.get("data", {})]
    return str(text)


def container_port(container: Resource, name: str) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def _projections(workload: Resource, container: Resource
                 ) -> Iterator[tuple[str, str, str, str]]:
    """(mount path, "configMap" or "secret", its name, {key: path}) for every ConfigMap
    and Secret item the container mounts."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = volume.get("projected", {}).get("sources", [])
        sources += [{k: volume[k]} for k in ("configMap", "secret") if k in volume]
        for source in sources:
            [(kind, ref)] = source.items()
            for item in ref.get("items", []):
                yield (f"{mount['mountPath']}/{item['path']}", kind,
                       ref.get("name") or ref.get("secretName"), item["key"])


def mounted_files(workload: Resource, container: Resource) -> set[str]:
    """The files the container sees from ConfigMaps and Secrets."""
    return {path for path, _, _, _ in _projections(workload, container)}


def lay_out(resources: list[Resource], workload: Resource, container: Resource,
            root: Path) -> Path:
    """Write the files the container sees from ConfigMaps and Secrets under `root`, each
    at its mount path, with every absolute path in them moved under `root` too; a Secret
    an overlay leaves out (overlays/example: people create the real one) is the base's
    placeholder, which has the same keys (test_the_secrets_keys_are_the_ones_the_pods_use)."""
    placeholder = yaml.safe_load((KUBERNETES / "base" / "secret.yaml").read_text())
    data: dict[tuple[str, str], dict[str, str]] = {
        ("secret", placeholder["metadata"]["name"]): placeholder["stringData"]}
    for r in resources:
        if r["kind"] == "ConfigMap":
            data[("configMap", r["metadata"]["name"])] = r["data"]
        elif r["kind"] == "Secret":
            data[("secret", r["metadata"]["name"])] = r.get("stringData", r.get("data"))
    mounts = sorted((m["mountPath"] for m in container.get("volumeMounts", [])), key=len,
                    reverse=True)  # one pass, longest first: nested mounts move once
    moved = re.compile('"(' + "|".join(re.escape(f"{m}/") for m in mounts) + ")")
    for path, kind, name, key in _projections(workload, container):
        text = moved.sub(lambda m: f'"{root}{m[1]}', data[(kind, name)][key])
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def writable_dirs(workload: Resource, container: Resource) -> list[str]:
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    return [m["mountPath"] for m in container.get("volumeMounts", [])
            if not m.get("readOnly") and ("hostPath" in volumes[m["name"]]
                                          or "emptyDir" in volumes[m["name"]])]


# --- schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_validates_against_the_kubernetes_schemas(
        rendered: list[Resource], version: str) -> None:
    kinds = set()
    for resource in rendered:
        kinds.add(resource["kind"])
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(resource, SERVICE_MONITOR)
            continue
        # strict: unknown fields are errors, so a misspelt key does not pass unseen.
        kubernetes_validate.validate(resource, version, strict=True)
    assert {"DaemonSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
            "HorizontalPodAutoscaler"} <= kinds


def test_strict_validation_catches_a_misspelt_field(base: list[Resource]) -> None:
    workload, container = by_command(base, "neuron")
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, VERSIONS[0], strict=True)


def test_the_servicemonitor_overlay_has_both_monitors() -> None:
    rendered = render(KUBERNETES / "overlays" / "servicemonitor")
    monitors = {r["metadata"]["name"] for r in rendered if r["kind"] == "ServiceMonitor"}
    assert monitors == {"cortex-gateway", "cortex-neuron"}
    broken = one(rendered, "ServiceMonitor", "cortex-neuron")
    broken["spec"]["endpoints"][0]["authorisation"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SERVICE_MONITOR)


# --- probes and hooks against the real apps --------------------------------------------------


def probes(container: Resource) -> list[Resource]:
    return [container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe",
                                              "startupProbe") if k in container]


def test_neuron_probes_answer_on_the_real_neuron_without_its_secret(
        rendered: list[Resource]) -> None:
    _, container = by_command(rendered, "neuron")
    assert len(probes(container)) >= 2
    app = neuron_app(NeuronConfig(secret="the-neurons-secret"),
                     Plugins(build_plugin_manager()))
    with TestClient(app) as client:
        assert client.get("/status").status_code == 401  # the secret is really on
        for probe in probes(container):
            assert container_port(container, probe["port"]) == split_listen(
                NeuronConfig().listen)[1]
            reply = client.get(probe["path"])
            assert reply.status_code == 200, (probe, reply.text)


def test_gateway_probes_answer_on_the_real_gateway_without_a_key(
        rendered: list[Resource]) -> None:
    _, container = by_command(rendered, "cortex")
    assert len(probes(container)) >= 2
    config = GatewayConfig(auth=AuthConfig(api_keys=["client-key"]))
    with TestClient(gateway_app(config, build_plugin_manager())) as client:
        assert client.get("/v1/models").status_code == 401  # keys are really on
        for probe in probes(container):
            assert container_port(container, probe["port"]) == split_listen(
                GatewaySection().listen)[1]
            reply = client.get(probe["path"])
            assert reply.status_code == 200, (probe, reply.text)


def test_the_neurons_prestop_hook_drains_within_the_grace_period(
        rendered: list[Resource]) -> None:
    workload, container = by_command(rendered, "neuron")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["neuron", "drain"]
    drain = neuron_cli.commands["drain"]
    params = drain.make_context("drain", list(command[2:])).params
    assert params["url"].endswith(f":{container_port(container, 'neuron')}")
    assert not params["undo"] and params["wait_for"] is not None
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= params["wait_for"] + GRACEFUL_TIMEOUT
    # `neuron drain` authenticates with $NEURON_SECRET: the secret the neuron reads.
    [env] = [e for e in container["env"] if e["name"] == "NEURON_SECRET"]
    ref = env["valueFrom"]["secretKeyRef"]
    neuron = tomllib.loads(config_file(rendered, "neuron.toml"))
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    secret_items = {(s["secret"]["name"], i["key"], i["path"])
                    for v in volumes for s in v.get("projected", {}).get("sources", [])
                    if "secret" in s for i in s["secret"]["items"]}
    [mount] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config"]
    assert (ref["name"], ref["key"],
            neuron["secret_file"].removeprefix(f"{mount}/")) in secret_items


def test_the_gateways_grace_period_covers_its_drain(rendered: list[Resource]) -> None:
    workload, container = by_command(rendered, "cortex")
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain_timeout = msgspec.convert(tomllib.loads(config_file(rendered, "cortex.toml"))[
        "gateway"], GatewaySection).drain_timeout
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(sleep[1]) + drain_timeout


# --- configs, ports, names -----------------------------------------------------------------


def test_the_configs_load_and_name_files_the_pods_mount(rendered: list[Resource],
                                                        tmp_path: Path) -> None:
    gateway, gateway_container = by_command(rendered, "cortex")
    neuron, neuron_container = by_command(rendered, "neuron")
    # Laid out as each pod sees /etc/cortex, then read by cortex's own loaders, which
    # read every file a config names (keys and secrets included).
    config_path = gateway_container["command"][gateway_container["command"].index(
        "--config") + 1]
    gateway_root = lay_out(rendered, gateway, gateway_container, tmp_path / "gateway")
    gateway_config, profiles = load_gateway_config(gateway_root / config_path.lstrip("/"))
    assert profiles
    # What the docs tell people to run before they apply it.
    checked = CliRunner().invoke(cortex_cli, ["config", "check", str(
        gateway_root / config_path.lstrip("/"))])
    assert checked.exit_code == 0, checked.output
    assert "1 discovery sources" in checked.output, checked.output
    neuron_path = neuron_container["command"][neuron_container["command"].index(
        "--config") + 1]
    neuron_root = lay_out(rendered, neuron, neuron_container, tmp_path / "neuron")
    neuron_config = load_neuron_config(neuron_root / neuron_path.lstrip("/"))
    # The secret the neuron reads is the one the gateway sends.
    placeholder = yaml.safe_load((KUBERNETES / "base" / "secret.yaml").read_text())
    assert neuron_config.secret == placeholder["stringData"]["neuron-secret"]

    gateway_files = mounted_files(gateway, gateway_container)
    assert isinstance(gateway_config.models, str)
    assert {config_path, str(Path(config_path).parent / gateway_config.models)} <= gateway_files
    cortex_toml = tomllib.loads(config_file(rendered, "cortex.toml"))
    named = [cortex_toml["auth"]["api_keys_file"],
             *(d["secret_file"] for d in cortex_toml.get("discovery", []))]
    assert len(named) >= 2 and set(named) <= gateway_files

    assert neuron_path in mounted_files(neuron, neuron_container)
    neuron_toml = tomllib.loads(config_file(rendered, "neuron.toml"))
    assert neuron_toml["secret_file"] in mounted_files(neuron, neuron_container)
    writable = writable_dirs(neuron, neuron_container)
    for path in (neuron_config.cache_dir, neuron_config.hf_cache):
        assert path and any(path == d or path.startswith(f"{d}/") for d in writable), path


def test_ports_are_the_config_defaults(rendered: list[Resource]) -> None:
    _, gateway = by_command(rendered, "cortex")
    _, neuron = by_command(rendered, "neuron")
    defaults = {"api": GatewaySection().listen, "metrics": GatewaySection().metrics_listen}
    cortex_toml = tomllib.loads(config_file(rendered, "cortex.toml"))["gateway"]
    for name, listen in defaults.items():
        key = "listen" if name == "api" else "metrics_listen"
        port = split_listen(listen)[1]
        assert container_port(gateway, name) == port
        assert split_listen(cortex_toml.get(key, listen))[1] == port
    port = split_listen(NeuronConfig().listen)[1]
    assert container_port(neuron, "neuron") == port
    neuron_toml = tomllib.loads(config_file(rendered, "neuron.toml"))
    assert split_listen(neuron_toml.get("listen", NeuronConfig().listen))[1] == port
    services = {r["metadata"]["name"]: r for r in rendered if r["kind"] == "Service"}
    assert {p["port"] for s in services.values() for p in s["spec"]["ports"]} == {
        split_listen(defaults["api"])[1], split_listen(defaults["metrics"])[1], port}


def test_the_discovery_name_is_the_headless_services_srv_name(
        rendered: list[Resource]) -> None:
    cortex_toml = tomllib.loads(config_file(rendered, "cortex.toml"))
    [discovery] = [d for d in cortex_toml["discovery"] if d["source"] == "dns"]
    match = re.fullmatch(r"_(?P<port>[^.]+)\._tcp\.(?P<service>[^.]+)\.(?P<ns>[^.]+)"
                         r"\.svc\.cluster\.local", discovery["options"]["name"])
    assert match, discovery
    service = one(rendered, "Service", match["service"])
    assert service["metadata"]["namespace"] == match["ns"]
    assert service["spec"]["clusterIP"] == "None"
    [port] = [p for p in service["spec"]["ports"] if p.get("name") == match["port"]]
    assert port["protocol"] == "TCP"
    workload, container = by_command(rendered, "neuron")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_services_budgets_and_scalers_find_their_targets(rendered: list[Resource]) -> None:
    pods = [(w["spec"]["template"]["metadata"]["labels"], c) for w, c in containers(rendered)]
    services = [r for r in rendered if r["kind"] == "Service"]
    for service in services:
        selected = [c for labels, c in pods
                    if service["spec"]["selector"].items() <= labels.items()]
        assert selected, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in {p["name"] for p in c["ports"]}
                       for c in selected), (service["metadata"]["name"], port)
    pdb = one(rendered, "PodDisruptionBudget", "cortex-gateway")
    gateway, _ = by_command(rendered, "cortex")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= gateway["spec"]["template"][
        "metadata"]["labels"].items()
    assert pdb["spec"]["minAvailable"] < gateway["spec"]["replicas"]
    hpa = one(rendered, "HorizontalPodAutoscaler", "cortex-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", gateway["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] == gateway["spec"]["replicas"]
    _, gateway_container = by_command(rendered, "cortex")
    assert gateway_container["resources"]["requests"]["cpu"]  # what Utilization is of
    for monitor in (r for r in rendered if r["kind"] == "ServiceMonitor"):
        [service] = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items()
                     <= s["metadata"].get("labels", {}).items()]
        names = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint.get("authorization", {}).get("credentials")
            if credentials:
                secret = one(rendered, "Secret", credentials["name"])
                assert credentials["key"] in secret.get("stringData", secret.get("data"))


def test_the_secrets_keys_are_the_ones_the_pods_use(rendered: list[Resource]) -> None:
    used: set[tuple[str, str]] = set()
    for workload, container in containers(rendered):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                used.add((ref["name"], ref["key"]))
        for volume in workload["spec"]["template"]["spec"]["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    used.update((source["secret"]["name"], i["key"])
                                for i in source["secret"]["items"])
    assert {name for name, _ in used} == {"cortex-secrets"}
    # The placeholder Secret, and the `kubectl create secret` its comment tells people
    # to run instead (an overlay may drop the placeholder: overlays/example does).
    placeholder = yaml.safe_load((KUBERNETES / "base" / "secret.yaml").read_text())
    keys = set(placeholder["stringData"])
    told = set(re.findall(r"--from-(?:file|literal)=([\w-]+)=",
                          (KUBERNETES / "base" / "secret.yaml").read_text()))
    assert {key for _, key in used} == keys == told
    for secret in (r for r in rendered if r["kind"] == "Secret"):
        assert set(secret.get("stringData", secret.get("data"))) == keys


def test_neurons_run_on_gpu_nodes_and_ask_for_gpus(rendered: list[Resource]) -> None:
    workload, container = by_command(rendered, "neuron")
    pod = workload["spec"]["template"]["spec"]
    assert workload["kind"] == "DaemonSet"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
