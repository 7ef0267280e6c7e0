"""`cortex launch claude|codex`: the installed client, started pointed at the gateway.

Claude Code runs for real (the npm package scripts/test_packages.sh installs into
.ci/node): a `-p` prompt through `cortex launch claude` answered by a scripted synthetic
profile. For Codex the gateway's Responses API is another piece of work, so its tests
check what is started: a stand-in `codex` script on PATH records the argv and
environment it is given, and the real Codex binary is pointed at a recording server
standing in for the gateway, to show it reads the provider, model and key it is given.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ..conftest import ROOT, NeuronProcess, free_port
from ..serve_support import GatewayProcess, nodes_up

BIN = ROOT / ".ci" / "node" / "node_modules" / ".bin"
BASE_PATH = "/usr/bin:/bin"  # no npm global bin: neither client is on it here
KEY = "sk-cortex-launch"


def launch(*args: str, path: str = BASE_PATH, cwd: Path | None = None,
           env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex.cli", "launch", *args], cwd=cwd or ROOT,
        env={**(env or {}), "PATH": path, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("client", "package"), [("claude", "@anthropic-ai/claude-code"),
                                                 ("codex", "@openai/codex")])
def test_a_missing_client_says_what_to_install(client: str, package: str) -> None:
    done = launch(client, "--model", "m", "-p", "hello")
    assert done.returncode != 0
    assert f"npm install -g {package}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def recorder(tmp_path: Path, name: str) -> Path:
    """A stand-in client on PATH that writes its argv and environment as JSON."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / name
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, "
                      f"open({str(tmp_path / 'ran.json')!r}, 'w'))\n")
    script.chmod(0o755)
    return bindir




@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`cortex serve` over a synthetic neuron whose one profile scripts a reply, taking
    one API key only: a client given another key gets 401."""
    tmp = tmp_path_factory.mktemp("launch")
    neuron = NeuronProcess({"memory_budget": "8GiB", "harness": {"synthetic": {"script": [
        {"text": "Hello from the scripted model."}]}}}, tmp)
    try:
        neuron.wait_ready()
        config = tmp / "cortex.toml"
        config.write_bytes(msgspec.toml.encode({
            "gateway": {"metrics_listen": f"127.0.0.1:{free_port()}", "poll_interval": 0.25},
            "neurons": [{"name": "a", "endpoint": neuron.url}], "auth": {"api_keys": [KEY]},
            "models": [{"id": "scripted", "harness": "synthetic", "source": "synthetic:rate=0",
                        "aliases": ["claude-*"], "n_ctx": 200000, "slots": 4}]}))
        process = GatewayProcess(tmp, ["--config", str(config)])
        try:
            process.wait(nodes_up(1), "the gateway sees the neuron", 30)
            yield process
        finally:
            process.stop()
    finally:
        neuron.stop()


def test_codex_gets_a_responses_provider_the_model_and_the_users_arguments(
        tmp_path: Path, gateway: GatewayProcess) -> None:
    bindir = recorder(tmp_path, "codex")
    done = launch("codex", "--url", f"{gateway.url}/", "exec", "--model", "qwen", "--json",
                  "--", "--model", "not-ours", path=f"{bindir}:{BASE_PATH}",
                  env={"CORTEX_API_KEY": KEY})
    assert done.returncode == 0, done.stderr
    ran = json.loads((tmp_path / "ran.json").read_text())
    assert ran["argv"] == [
        "-c", "model_provider=cortex",
        "-c", f'model_providers.cortex={{name="cortex", base_url="{gateway.url}/v1", '
              'wire_api="responses", env_key="CORTEX_API_KEY"}',
        "-c", 'model="qwen"',
        # The user's own arguments, in order; everything after `--` untouched.
        "exec", "--json", "--model", "not-ours"]
    assert ran["env"]["CORTEX_API_KEY"] == KEY


@pytest.mark.parametrize("client", ["claude", "codex"])
def test_a_gateway_that_is_down_or_refuses_the_key_is_said_so(
        tmp_path: Path, gateway: GatewayProcess, client: str) -> None:
    """Before the client starts, not in its retries."""
    bindir = recorder(tmp_path, client)
    down = launch(client, "--url", f"http://127.0.0.1:{free_port()}", "--model", "m", "-p",
                  "hi", path=f"{bindir}:{BASE_PATH}")
    assert down.returncode != 0 and "start it with `cortex serve`" in down.stderr
    refused = launch(client, "--url", gateway.url, "--model", "m", "-p", "hi",
                     path=f"{bindir}:{BASE_PATH}", env={"CORTEX_API_KEY": "sk-wrong"})
    assert refused.returncode != 0 and gateway.url in refused.stderr, refused.stderr
    assert not (tmp_path / "ran.json").exists()


def test_codex_without_model_asks_for_the_gateways_first_model(
        tmp_path: Path, gateway: GatewayProcess) -> None:
    """Codex's own default names an OpenAI model no gateway serves."""
    bindir = recorder(tmp_path, "codex")
    done = launch("codex", "exec", "hi", path=f"{bindir}:{BASE_PATH}",
                  env={"CORTEX_URL": gateway.url, "CORTEX_API_KEY": KEY})
    assert done.returncode == 0, done.stderr
    ran = json.loads((tmp_path / "ran.json").read_text())
    assert ran["argv"][4:] == ["-c", 'model="scripted"', "exec", "hi"]
    assert f'base_url="{gateway.url}/v1"' in ran["argv"][3]
    assert ran["env"]["CORTEX_API_KEY"] == KEY


class _Recorded(http.server.BaseHTTPRequestHandler):
    """Lists one model, and answers every POST with a 400 after noting its path, model
    and keys."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.seen.append({"path": self.path, "model": body.get("model"),
                          "authorization": self.headers.get("authorization"),
                          "x-api-key": self.headers.get("x-api-key")})
        reply = b'{"error": {"message": "recorded", "type": "invalid_request_error"}}'
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:
        reply = b'{"object": "list", "data": [{"id": "scripted", "object": "model"}]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


class Recording:
    def __init__(self, url: str, requests: list[dict[str, Any]]) -> None:
        self.url, self.requests = url, requests


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """A loopback server that notes every POST (_Recorded) and refuses it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    _Recorded.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Recording(f"http://127.0.0.1:{server.server_port}", _Recorded.seen)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not (BIN / "codex").exists(),
                    reason="no codex CLI: run scripts/test_packages.sh")
def test_the_real_codex_sends_its_responses_requests_to_the_gateway(tmp_path: Path) -> None:
    """A recording server stands in for the gateway (its Responses API is built
    elsewhere): Codex reads the provider, model and key `cortex launch` gave it."""
    with recording() as seen:
        home = tmp_path / "home"
        (home / ".codex").mkdir(parents=True)
        launch("codex", "--url", seen.url, "--model", "scripted", "exec",
               "--skip-git-repo-check", "Say hello.", path=f"{BIN}:{BASE_PATH}",
               cwd=tmp_path, timeout=120,
               env={"HOME": str(home), "CODEX_HOME": str(home / ".codex"),
                    "CORTEX_API_KEY": KEY})
    assert seen.requests, "codex sent nothing to the gateway"
    assert {(r["path"], r["model"], r["authorization"]) for r in seen.requests} == {
        ("/v1/responses", "scripted", f"Bearer {KEY}")}


@pytest.mark.skipif(not (BIN / "claude").exists(),
                    reason="no claude CLI: run scripts/test_packages.sh")
def test_claude_code_sends_the_gateways_key_and_never_an_anthropic_one(
        tmp_path: Path) -> None:
    """A recording server stands in for the gateway, to see the headers: the caller's
    ANTHROPIC_API_KEY (a real Anthropic key, say) is emptied, not sent along."""
    with recording() as seen:
        home = tmp_path / "home"
        home.mkdir()
        launch("claude", "--url", seen.url, "--model", "scripted", "-p", "Say hello.",
               path=f"{BIN}:{BASE_PATH}", cwd=tmp_path, timeout=120,
               env={"HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
                    "CORTEX_API_KEY": KEY, "ANTHROPIC_API_KEY": "sk-ant-not-for-cortex",
                    "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
                    "DISABLE_AUTOUPDATER": "1", "API_TIMEOUT_MS": "5000"})
    messages = [r for r in seen.requests if r["path"].startswith("/v1/messages")]
    assert messages, seen.requests
    assert {(r["model"], r["authorization"], r["x-api-key"]) for r in messages} == {
        ("scripted", f"Bearer {KEY}", None)}


@pytest.mark.skipif(not (BIN / "claude").exists(),
                    reason="no claude CLI: run scripts/test_packages.sh")
@pytest.mark.parametrize("model", [None, "scripted"])
def test_claude_code_answers_a_prompt_through_launch(tmp_path: Path, gateway: GatewayProcess,
                                                     model: str | None) -> None:
    """`claude -p` as `cortex launch` starts it, offline and alone (as in
    tests/e2e/test_claude_code.py). The gateway takes only CORTEX_API_KEY's key: an
    Anthropic key in the caller's environment would win over it were it not emptied.
    Without --model the `claude-*` alias takes the names Claude Code asks for; with one,
    every model setting names it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
           "CORTEX_URL": gateway.url, "CORTEX_API_KEY": KEY,
           "ANTHROPIC_API_KEY": "sk-ant-a-real-key-not-for-cortex",
           "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
           "DISABLE_AUTOUPDATER": "1"}
    chosen = ["--model", model] if model else []
    done = launch("claude", *chosen, "-p", "Say hello.", "--output-format", "json",
                  "--max-turns", "2", path=f"{BIN}:{BASE_PATH}", cwd=tmp_path, env=env,
                  timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.log()}"
    result = json.loads(done.stdout)
    assert result["is_error"] is False and result["result"] == "Hello from the scripted model."
    if model:
        assert set(result["modelUsage"]) == {model}


def test_launch_is_a_command_of_cortex() -> None:
    done = subprocess.run([sys.executable, "-m", "cortex.cli", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "launch" in done.stdout
