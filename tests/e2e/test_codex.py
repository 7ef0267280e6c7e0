"""The real Codex CLI (`codex exec`) against `cortex serve`, over the Responses API.

The binary is the npm package scripts/test_packages.sh installs into .ci/node (pinned
there); without it these tests skip. It runs offline and alone: a temporary HOME and
CODEX_HOME, whose config.toml is the one docs/clients.md gives (a `model_providers`
entry with `wire_api = "responses"` and base_url the gateway), no login.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT, free_port
from ..serve_support import GatewayProcess, nodes_up, served, synthetic_neuron

CODEX = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "codex"

pytestmark = pytest.mark.skipif(not CODEX.exists(),
                                reason="no codex CLI: run scripts/test_packages.sh")


def documented_config() -> str:
    """The config.toml docs/clients.md gives for Codex: the test runs exactly it."""
    section = (ROOT / "docs" / "clients.md").read_text().split("\n## Codex\n", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def codex(url: str, home: Path, workdir: Path, prompt: str, *args: str, model: str,
          timeout: float, provider: str = "") -> subprocess.CompletedProcess[str]:
    """`codex exec --json` with cortex as its model provider, configured as
    docs/clients.md says (`provider`: more keys for its table)."""
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    config = documented_config().replace("http://gateway:31313", url)
    (home / ".codex" / "config.toml").write_text(config + provider)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "CODEX_HOME": str(home / ".codex"), "CORTEX_API_KEY": "cortex-test"}
    return subprocess.run(
        [str(CODEX), "exec", "--json", "--skip-git-repo-check", "-m", model, *args, prompt],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL)


def events_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def requests_logged(log: str) -> list[dict[str, str]]:
    """The gateway's request log (cortex.requests lines) as fields."""
    return [dict(re.findall(r"(\w+)=(\S+)", line.split("cortex.requests:", 1)[1]))
            for line in log.splitlines() if "cortex.requests:" in line]


@pytest.mark.model
def test_codex_exec_works_on_the_embedded_default(tmp_path: Path, cache_dir: Path,
                                                  gemma_path: Path) -> None:
    """No gateway configuration: `cortex serve` with the bundled profile, whose template
    takes Codex's tools and whose context holds its ~10,000-token prompt, with the web
    search tool Codex always sends set aside. The small base model's words are
    nonsense, so this checks the protocol, not the answer."""
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "cortex").symlink_to(cache_dir)  # reuse the assembled model
    workdir = tmp_path / "work"
    workdir.mkdir()
    gateway = GatewayProcess(tmp_path, ["--neuron-listen", f"127.0.0.1:{free_port()}"],
                             env={"HOME": str(home)})
    try:
        gateway.wait(nodes_up(1), "the embedded neuron comes up", 60)
        # A 10,000-token prompt is prefilled on a CPU: minutes on two cores.
        done = codex(gateway.url, home, workdir, "Say hello.", model="gemma3-270m",
                     timeout=1500)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.log()}"
        events = events_of(done)
        assert any(e.get("type") == "turn.completed" for e in events), done.stdout
        assert not any(e.get("type") in ("turn.failed", "error") for e in events), done.stdout
        answered = [r for r in requests_logged(gateway.log())
                    if r["dialect"] == "responses" and r["status"] == "200"]
        assert answered, gateway.log()
        assert max(int(r["tokens_in"]) for r in answered) > 5000, answered  # its tools
        assert {r["model"] for r in answered} == {"gemma3-270m"}
    finally:
        assert gateway.stop() == 0, gateway.log()


def test_codex_runs_a_shell_tool_round_trip_against_a_scripted_model(tmp_path: Path) -> None:
    """function_call -> Codex runs the command -> function_call_output -> the final
    answer, end to end. The model is the synthetic harness's script ([harness.synthetic]
    script), because a base model does not call tools on cue: a script makes the round
    trip certain, and what is tested is the protocol between the real CLI and the
    gateway (a streamed function call Codex accepts and runs, its output sent back as
    replayed items with `store: false`, the hosted web_search tool set aside). Each
    reply's first token comes after 4 s and Codex's stream idle timeout is set to 1.5 s:
    the gateway's repeated `response.in_progress` while the model prefills is what
    keeps Codex waiting (it ignores SSE comments), as it must for a long prompt on a
    CPU."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("The secret word is periwinkle.\n")
    answer = "The notes say the secret word is periwinkle."
    neuron = synthetic_neuron(tmp_path, harness={"synthetic": {"script": [
        {"tool": "exec_command", "arguments": {"cmd": "cat notes.txt"}}, {"text": answer}]}})
    scripted = {"id": "scripted", "harness": "synthetic", "n_ctx": 200000, "slots": 4,
                "source": "synthetic:rate=0,ttft_ms=4000"}
    try:
        with served(tmp_path, [{"name": "a", "endpoint": neuron.url}], profiles=[scripted],
                    gateway={"keepalive_interval": 0.25}) as gateway:
            done = codex(gateway.url, tmp_path / "home", workdir,
                         "Read notes.txt and tell me the secret word.",
                         "--sandbox", "read-only", model="scripted", timeout=300,
                         provider="stream_idle_timeout_ms = 1500\nstream_max_retries = 0\n")
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.log()}"
            items = [e["item"] for e in events_of(done) if e.get("type") == "item.completed"]
            commands = [i for i in items if i.get("type") == "command_execution"]
            assert len(commands) == 1, items
            assert "cat notes.txt" in commands[0]["command"]
            assert "periwinkle" in commands[0]["aggregated_output"]  # Codex ran it
            assert commands[0]["exit_code"] == 0
            messages = [i["text"] for i in items if i.get("type") == "agent_message"]
            assert messages == [answer]
            answered = [r for r in requests_logged(gateway.log())
                        if r["dialect"] == "responses" and r["model"] == "scripted"]
            assert [r["status"] for r in answered].count("200") >= 2, gateway.log()
    finally:
        neuron.stop()


def test_a_reply_cut_by_the_profiles_default_budget_ends_codexs_turn(tmp_path: Path) -> None:
    """Codex sends no `max_output_tokens`, so a model that does not stop would write to
    its context's end; a profile's `default_max_tokens` (the bundled one sets 2048) cuts
    the reply, which reaches Codex as an `incomplete` response (`max_output_tokens`):
    Codex must end its turn with what it got, not fail or retry. The synthetic harness
    stands in for a model that never stops (its replies here are 500 words long)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    rambler = {"id": "rambler", "harness": "synthetic", "source": "synthetic:rate=0,tokens=500",
               "n_ctx": 200000, "default_max_tokens": 7}
    neuron = synthetic_neuron(tmp_path)
    try:
        with served(tmp_path, [{"name": "a", "endpoint": neuron.url}],
                    profiles=[rambler]) as gateway:
            done = codex(gateway.url, tmp_path / "home", workdir, "Say hello.",
                         model="rambler", timeout=300)
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.log()}"
            events = events_of(done)
            assert any(e.get("type") == "turn.completed" for e in events), done.stdout
            messages = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                        and e["item"].get("type") == "agent_message"]
            assert len(messages) == 1 and len(messages[0].split()) == 7, messages
            answered = [r for r in requests_logged(gateway.log())
                        if r["dialect"] == "responses" and r["model"] == "rambler"]
            assert [r["status"] for r in answered] == ["200"], gateway.log()  # no retry
            assert answered[0]["tokens_out"] == "7", answered
    finally:
        neuron.stop()
