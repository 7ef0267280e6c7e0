"""`cortex config check` runs what `cortex serve` runs: each mistake of issue #18's first
hour is refused by the check, by `serve` (one line each, no traceback, non-zero exit) and
by a reload (400, logged), naming the file, the dotted key and the model or neuron."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cortex.cli import main
from cortex.cli.serve import embedded_config

from ..conftest import ROOT, NeuronProcess, free_port
from ..serve_support import served

NEURON = '[[neurons]]\nname = "gpu1"\nendpoint = "http://127.0.0.1:13131"\n'
MODEL = '[[models]]\nid = "gemma"\nsource = "bundled:gemma3-270m"\n'
#: (what is wrong, cortex.toml, models.toml, the line `config check` must print)
MISTAKES = [
    ("eviction strategy", '[eviction]\nstrategy = "lur"\n' + NEURON, MODEL,
     "gw.toml: eviction.strategy: unknown eviction policy `lur` (did you mean `lru`?)"),
    ("routing strategy", '[routing]\nstrategy = "afinity"\n' + NEURON, MODEL,
     "gw.toml: routing.strategy: unknown routing strategy `afinity` (did you mean "
     "`affinity`?)"),
    ("eviction option", '[eviction.options]\nbogus = 1\n' + NEURON, MODEL,
     "gw.toml: eviction.options: Object contains unknown field `bogus`"),
    ("routing option", '[routing.options]\nbogus = 1\n' + NEURON, MODEL,
     "gw.toml: routing.options: Object contains unknown field `bogus`"),
    ("listen without port", '[gateway]\nlisten = "localhost"\n' + NEURON, MODEL,
     "gw.toml: gateway.listen: `localhost` is not host:port"),
    ("port out of range", '[gateway]\nlisten = "127.0.0.1:99999"\n' + NEURON, MODEL,
     "gw.toml: gateway.listen: `127.0.0.1:99999`: port 99999 is not between 1 and 65535"),
    ("metrics port out of range", '[gateway]\nmetrics_listen = "0.0.0.0:0"\n' + NEURON, MODEL,
     "gw.toml: gateway.metrics_listen: `0.0.0.0:0`: port 0 is not between 1 and 65535"),
    ("missing keys file", '[auth]\napi_keys_file = "/nonexistent/keys.txt"\n' + NEURON, MODEL,
     "gw.toml: auth.api_keys_file: `/nonexistent/keys.txt`: cannot read it"),
    ("endpoint without scheme", NEURON.replace("http://", ""), MODEL,
     "gw.toml: neurons[gpu1].endpoint: `127.0.0.1:13131` needs the scheme: "
     "http://127.0.0.1:13131"),
    ("no neurons", "", MODEL, "gw.toml: no [[neurons]]"),
    ("unknown neuron in a profile", NEURON, MODEL + 'neurons = ["gpu2"]\n',
     "mods.toml: models[gemma].neurons: no neuron is named `gpu2` (did you mean `gpu1`?)"),
    ("misspelt chat format", NEURON, MODEL + 'chat_format = "gema"\n',
     "mods.toml: models[gemma].chat_format: unknown chat format `gema` (did you mean "
     "`gemma`?)"),
    ("misspelt bundled model", NEURON, MODEL.replace("gemma3", "gema3"),
     "mods.toml: models[gemma].source: no bundled model is named `gema3-270m` (did you mean "
     "`gemma3-270m`?)"),
    ("a type error names the model", NEURON, MODEL + 'n_ctx = "big"\n',
     "mods.toml: models[gemma].n_ctx: Expected int, got str"),
    ("unknown dialect", '[dialects.antropic]\n' + NEURON, MODEL,
     "gw.toml: dialects.antropic: no dialect is named `antropic` (did you mean `anthropic`?)"),
]


def write(tmp: Path, config: str, models: str) -> Path:
    """A cortex.toml under another name (gw.toml), its models in mods.toml."""
    (tmp / "mods.toml").write_text(models)
    path = tmp / "gw.toml"
    path.write_text('models = "mods.toml"\n' + config)
    return path


def test_a_correct_configuration_passes(tmp_path: Path) -> None:
    path = write(tmp_path, NEURON, MODEL)
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0 and f"{path}: ok (1 neurons, 1 models" in result.output, \
        result.output


@pytest.mark.parametrize(("config", "models", "line"), [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_config_check_catches_the_mistake(tmp_path: Path, config: str, models: str,
                                          line: str) -> None:
    result = CliRunner().invoke(main, ["config", "check", str(write(tmp_path, config, models))])
    assert result.exit_code == 1, result.output
    assert f"error: {tmp_path}/{line}" in result.output, result.output
    assert "Traceback" not in result.output


def test_every_problem_is_found_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nlisten = "localhost"\n' + NEURON.replace("http://", ""),
                 MODEL + 'chat_format = "gema"\n')
    lines = CliRunner().invoke(main, ["config", "check", str(path)]).output.splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "gateway.listen", "neurons[gpu1].endpoint", "models[gemma].chat_format"], lines


def run_cortex(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cortex.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_serve_refuses_what_the_check_refuses_with_the_same_lines(tmp_path: Path) -> None:
    path = write(tmp_path, '[eviction]\nstrategy = "lur"\n' + NEURON.replace("http://", ""),
                 MODEL + 'chat_format = "gema"\n')
    check = run_cortex("config", "check", str(path))
    serve = run_cortex("serve", "--config", str(path))
    assert check.returncode == serve.returncode == 1, serve.stderr
    assert len(check.stderr.splitlines()) == 3, check.stderr
    assert serve.stderr == check.stderr  # nothing else: no traceback, no "listening"


def test_a_busy_port_is_one_line_and_nothing_claims_to_listen(tmp_path: Path) -> None:
    path = write(tmp_path, NEURON, MODEL)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = run_cortex("serve", "--config", str(path), "--listen", f"127.0.0.1:{port}")
        neuron = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "serve",
                                 "--listen", f"127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=60, cwd=ROOT)
    assert serve.returncode == 1 and serve.stderr == (
        f"error: gateway cannot listen on 127.0.0.1:{port}: address already in use (another "
        "process listens there: stop it, or choose another port)\n"), serve.stderr
    assert neuron.returncode == 1, neuron.stderr
    assert neuron.stderr.splitlines()[-1] == (
        f"Error: neuron cannot listen on 127.0.0.1:{port}: address already in use (another "
        "process listens there: stop it, or choose another port)"), neuron.stderr
    assert "Traceback" not in neuron.stderr and "listening" not in neuron.stderr


def test_a_flag_is_named_as_the_source_of_a_bad_address(tmp_path: Path) -> None:
    serve = run_cortex("serve", "--config", str(write(tmp_path, NEURON, MODEL)),
                       "--metrics-listen", "127.0.0.1")
    assert serve.returncode == 1
    assert serve.stderr.startswith("error: --metrics-listen: `127.0.0.1` is not host:port"), \
        serve.stderr


def test_a_bad_reload_answers_400_and_is_logged(tmp_path: Path) -> None:
    neuron = [{"name": "absent", "endpoint": f"http://127.0.0.1:{free_port()}"}]
    with served(tmp_path, neuron, up=0) as gateway:
        [config] = tmp_path.glob("cortex-*.toml")
        config.write_text(config.read_text() + '\n[eviction]\nstrategy = "lur"\n')
        reply = httpx.post(f"{gateway.url}/admin/reload", timeout=30)
        assert reply.status_code == 400, reply.text
        line = f"{config}: eviction.strategy: unknown eviction policy `lur`"
        assert line in reply.json()["error"]["message"]
        gateway.wait(lambda _: f"configuration not reloaded: {line}" in gateway.log(),
                     "the refusal is logged")
        gateway.proc.send_signal(signal.SIGHUP)
        gateway.wait(lambda _: f"SIGHUP: configuration not reloaded: {line}" in gateway.log(),
                     "SIGHUP logs the same line")
        assert "Traceback" not in gateway.log()


def test_live_asks_each_neuron_to_estimate_each_profile(tmp_path: Path) -> None:
    """The gateway cannot see a neuron's disk: --live asks the neuron, which can."""
    neuron = NeuronProcess({"memory_budget": "8GiB", "model_dirs": [str(tmp_path)]}, tmp_path)
    try:
        neuron.wait_ready()
        missing = tmp_path / "missing.gguf"
        path = write(tmp_path, NEURON.replace("127.0.0.1:13131", f"127.0.0.1:{neuron.port}"),
                     '[[models]]\nid = "syn"\nsource = "synthetic:bytes=1GiB"\n'
                     'harness = "synthetic"\n'
                     f'[[models]]\nid = "lost"\nsource = "{missing}"\n')
        assert run_cortex("config", "check", str(path)).returncode == 0
        live = run_cortex("config", "check", "--live", str(path))
    finally:
        neuron.stop()
    assert live.returncode == 1, live.stdout + live.stderr
    assert f"{tmp_path}/mods.toml: models[syn] on gpu1: " in live.stdout
    [problem] = live.stderr.splitlines()
    assert problem.startswith(f"error: {tmp_path}/mods.toml: models[lost] on neuron `gpu1`: "
                              "404"), problem
    assert str(missing) in problem


def test_the_embedded_default_takes_its_addresses_from_flags_or_environment() -> None:
    """Both addresses of the embedded default are checked like a file's, and named by
    the flag (or its environment variable) that set them."""
    serve = subprocess.run(
        [sys.executable, "-m", "cortex.cli", "serve", "--listen", "127.0.0.1:99999"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "CORTEX_METRICS_LISTEN": "nowhere"})
    assert serve.returncode == 1
    assert serve.stderr.splitlines() == [
        "error: --listen: `127.0.0.1:99999`: port 99999 is not between 1 and 65535",
        "error: --metrics-listen: `nowhere` is not host:port (for example 127.0.0.1:31313, "
        "0.0.0.0:31313 for every interface, [::1]:31313)"], serve.stderr


def test_the_embedded_default_serves_this_machine_only_unless_told() -> None:
    config, _, neuron = embedded_config(None, "127.0.0.1:13131")
    assert (config.gateway.listen, config.gateway.metrics_listen) == (
        "127.0.0.1:31313", "127.0.0.1:31314")
    config, _, _ = embedded_config("0.0.0.0:8080", "127.0.0.1:13131", "0.0.0.0:8081")
    assert (config.gateway.listen, config.gateway.metrics_listen) == (
        "0.0.0.0:8080", "0.0.0.0:8081")
    assert neuron.listen == "127.0.0.1:13131"
