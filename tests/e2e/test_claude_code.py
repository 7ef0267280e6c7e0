"""The real Claude Code CLI (`claude -p`) against `cortex serve`.

The binary is the npm package scripts/test_packages.sh installs into .ci/node (pinned
there); without it these tests skip. It runs offline and alone: a temporary HOME and
config dir, no telemetry, no update checks, no non-essential traffic, the key empty so
that the gateway's token is what it sends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ..conftest import ROOT, NeuronProcess, free_port
from ..serve_support import GatewayProcess, nodes_up

CLAUDE = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "claude"

pytestmark = pytest.mark.skipif(not CLAUDE.exists(),
                                reason="no claude CLI: run scripts/test_packages.sh")


def claude(url: str, home: Path, workdir: Path, prompt: str, *args: str, timeout: float,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **(env or {}), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"), "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": "cortex-test",  # sent as Authorization: Bearer
        "ANTHROPIC_API_KEY": "",  # empty, or it would win over the token
        "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # 2.1.332 reads the context size only with compaction off (one exchange here).
        "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "32768", "DISABLE_COMPACT": "1",
    }
    return subprocess.run(
        [str(CLAUDE), "-p", prompt, "--model", "claude-sonnet-4-6", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def requests_logged(log: str) -> list[dict[str, str]]:
    """The gateway's request log (cortex.requests lines) as fields."""
    return [dict(re.findall(r"(\w+)=(\S+)", line.split("cortex.requests:", 1)[1]))
            for line in log.splitlines() if "cortex.requests:" in line]


@pytest.mark.model
def test_claude_code_works_on_the_embedded_default(tmp_path: Path, cache_dir: Path,
                                                   gemma_path: Path) -> None:
    """No configuration at all: `cortex serve` with the bundled profile, whose template
    takes Claude Code's ~24 tools and whose context holds its ~20,000-token prompt, and
    whose `claude-*` alias takes the model name this release asks for. The small base
    model's words are nonsense, so this checks the protocol, not the answer."""
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "cortex").symlink_to(cache_dir)  # reuse the assembled model
    workdir = tmp_path / "work"
    workdir.mkdir()
    gateway = GatewayProcess(tmp_path, ["--neuron-listen", f"127.0.0.1:{free_port()}"],
                             env={"HOME": str(home)})
    try:
        gateway.wait(nodes_up(1), "the embedded neuron comes up", 60)
        # A 20,000-token prompt is prefilled on a CPU: minutes on two cores. The reply
        # is capped, or the base model may ramble through the 12,000 tokens left.
        done = claude(gateway.url, home, workdir, "Say hello.", "--output-format", "json",
                      "--max-turns", "2", timeout=1500,
                      env={"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "64"})
        result = json.loads(done.stdout)
        assert result["type"] == "result" and isinstance(result["result"], str), result
        # The base model samples at Claude Code's temperature: it may end its turn within
        # the cap, or write past it in all four of the CLI's tries ("resume" after
        # max_tokens), which the CLI reports as its own output-token limit. Either way
        # every request was served; any other ending is a failure.
        ran_long = result.get("api_error") == "max_output_tokens"
        assert (done.returncode == 0 and result["is_error"] is False) or ran_long, \
            f"{done.stdout}\n{done.stderr}\n{gateway.log()}"
        logged = [r for r in requests_logged(gateway.log()) if r["dialect"] == "anthropic"]
        answered = [r for r in logged if r["status"] == "200"]
        assert answered, gateway.log()
        # Its tools make the prompt: about 20,000 tokens, against ~3,000 without them.
        assert max(int(r["tokens_in"]) for r in answered) > 12000, answered
        assert {r["model"] for r in answered} == {"gemma3-270m"}
    finally:
        assert gateway.stop() == 0, gateway.log()


def test_claude_code_runs_a_tool_round_trip_against_a_scripted_model(tmp_path: Path) -> None:
    """tool_use -> the CLI runs Read -> tool_result -> the final answer, end to end. The
    model is the synthetic harness's script ([harness.synthetic] script), because a
    base model does not call tools on cue: a script makes the round trip certain, and
    what is tested is the protocol between the real CLI and the gateway."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    notes = workdir / "notes.txt"
    notes.write_text("The secret word is periwinkle.\n")
    answer = "The notes say the secret word is periwinkle."
    neuron = NeuronProcess({"memory_budget": "8GiB", "harness": {"synthetic": {"script": [
        {"tool": "Read", "arguments": {"file_path": str(notes)}}, {"text": answer}]}}},
        tmp_path)
    try:
        neuron.wait_ready()
        config = tmp_path / "cortex.toml"
        config.write_bytes(msgspec.toml.encode({
            "gateway": {"metrics_listen": f"127.0.0.1:{free_port()}", "poll_interval": 0.25},
            "neurons": [{"name": "a", "endpoint": neuron.url}],
            "models": [{"id": "scripted", "harness": "synthetic", "source": "synthetic:rate=0",
                        "aliases": ["claude-*"], "n_ctx": 200000, "slots": 4}]}))
        gateway = GatewayProcess(tmp_path, ["--config", str(config)])
        try:
            gateway.wait(nodes_up(1), "the gateway sees the neuron", 30)
            done = claude(gateway.url, tmp_path / "home", workdir,
                          "Read notes.txt and tell me the secret word.",
                          "--output-format", "stream-json", "--verbose", "--max-turns", "3",
                          "--allowedTools", "Read", timeout=300)
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.log()}"
            events: list[Any] = [json.loads(line) for line in done.stdout.splitlines()
                                 if line.startswith("{")]
            calls = [block for e in events if e.get("type") == "assistant"
                     for block in e["message"]["content"] if block.get("type") == "tool_use"]
            assert [(c["name"], c["input"]) for c in calls] == [
                ("Read", {"file_path": str(notes)})]
            results = [block for e in events if e.get("type") == "user"
                       for block in e["message"]["content"]
                       if isinstance(block, dict) and block.get("type") == "tool_result"]
            assert len(results) == 1 and results[0]["tool_use_id"] == calls[0]["id"]
            assert "periwinkle" in json.dumps(results[0]["content"])  # the CLI read it
            final = events[-1]
            assert final["type"] == "result" and final["is_error"] is False, final
            assert final["result"] == answer and final["num_turns"] == 2
            answered = [r for r in requests_logged(gateway.log())
                        if r["dialect"] == "anthropic" and r["model"] == "scripted"]
            assert [r["status"] for r in answered].count("200") >= 2, gateway.log()
        finally:
            assert gateway.stop() == 0, gateway.log()
    finally:
        neuron.stop()
