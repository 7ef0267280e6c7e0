"""The real Codex CLI in `--oss` mode with its Ollama provider (`codex exec --oss
--local-provider ollama`) against `cortex serve`: the Ollama side of the gateway
(`/api/version`, which tells Codex to speak the Responses API; `/api/pull`, which Codex
calls for a model its model list lacks) and then the Responses dialect for the turns.

The binary is the npm package scripts/test_packages.sh installs into .ci/node; without
it, or without the Responses dialect installed, these tests skip. The model is the
synthetic harness's script, because a base model does not call tools on cue: what is
tested is the protocol between the real CLI and the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cortex import Plugins, build_plugin_manager

from ..conftest import ROOT
from ..serve_support import served, synthetic_neuron

CODEX = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "codex"
RESPONSES = "responses" in Plugins(build_plugin_manager(entry_points=False)).dialects

pytestmark = [
    pytest.mark.skipif(not CODEX.exists(), reason="no codex CLI: run scripts/test_packages.sh"),
    pytest.mark.skipif(not RESPONSES, reason="Codex --oss needs the Responses dialect"),
]


def codex_oss(url: str, home: Path, workdir: Path, prompt: str, *args: str, model: str,
              timeout: float) -> subprocess.CompletedProcess[str]:
    """`codex exec --oss` with its Ollama provider at the gateway, as docs/clients.md
    shows (CODEX_OSS_BASE_URL: the gateway's `/v1`)."""
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "CODEX_HOME": str(home / ".codex"), "CODEX_OSS_BASE_URL": f"{url}/v1"}
    return subprocess.run(
        [str(CODEX), "exec", "--oss", "--local-provider", "ollama", "--json",
         "--skip-git-repo-check", "-m", model, *args, prompt],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL)


def events_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_codex_oss_pulls_then_runs_a_tool_round_trip(tmp_path: Path) -> None:
    """Codex asks `/api/version` (0.13.4 or later: the Responses API) and `/api/tags`,
    pulls the model it was given since the list lacks it (`scripted:latest`: Ollama's
    default tag, which names `scripted`), so the gateway loads it and streams the load,
    then runs the scripted turn: a shell call it executes, its output sent back, a final
    answer."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("The secret word is periwinkle.\n")
    answer = "The notes say the secret word is periwinkle."
    neuron = synthetic_neuron(tmp_path, harness={"synthetic": {"script": [
        {"tool": "exec_command", "arguments": {"cmd": "cat notes.txt"}}, {"text": answer}]}})
    scripted = {"id": "scripted", "harness": "synthetic", "n_ctx": 200000, "slots": 4,
                "source": "synthetic:rate=0,load_ms=500"}
    try:
        with served(tmp_path, [{"name": "a", "endpoint": neuron.url}],
                    profiles=[scripted]) as gateway:
            done = codex_oss(gateway.url, tmp_path / "home", workdir,
                             "Read notes.txt and tell me the secret word.",
                             "--sandbox", "read-only", model="scripted:latest", timeout=300)
            log = gateway.log()
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log}"
            items = [e["item"] for e in events_of(done) if e.get("type") == "item.completed"]
            commands = [i for i in items if i.get("type") == "command_execution"]
            assert len(commands) == 1 and "periwinkle" in commands[0]["aggregated_output"]
            assert [i["text"] for i in items if i.get("type") == "agent_message"] == [answer]
            # Loaded by Codex's pull, before its first turn: no request waited for a load.
            assert "loaded scripted" in log
            turns = [line for line in log.splitlines() if "dialect=responses" in line]
            assert len(turns) >= 2 and all(" queue=0.0" in line for line in turns), log
    finally:
        neuron.stop()
