"""`cortex serve` as a real process: what the limits, secret, fuzz, fault and load tests
run against (over synthetic neurons, no model needed), hypercorn settings included."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from .conftest import ROOT, NeuronProcess, free_port

#: Synthetic profiles: `syn` streams up to 8 tokens; `capped` has a max_tokens cap of 5.
PROFILES: list[dict[str, Any]] = [
    {"id": "syn", "source": "synthetic:rate=0,tokens=8", "harness": "synthetic",
     "n_ctx": 64, "slots": 4},
    {"id": "capped", "source": "synthetic:rate=0,tokens=40", "harness": "synthetic",
     "n_ctx": 512, "slots": 4, "max_tokens": 5},
]


def synthetic_neuron(tmp: Path, **config: Any) -> NeuronProcess:
    neuron = NeuronProcess({"memory_budget": "8GiB", **config}, tmp)
    neuron.wait_ready()
    return neuron


class GatewayProcess:
    """`cortex serve ARGS` as a subprocess on a free loopback port, its output in a log:
    for what only a process shows (signals, exit codes, RSS, hypercorn's own limits)."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None,
                 nofile: int | None = None) -> None:
        """`nofile`: the process's limit on open files (RLIMIT_NOFILE), to run out of
        them without opening thousands of connections."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"gateway-{self.port}.log"

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cortex.cli", "serve", "--listen",
                 f"127.0.0.1:{self.port}", *args], stdout=log, stderr=subprocess.STDOUT,
                cwd=ROOT, env={**os.environ, **(env or {})}, preexec_fn=limit)

    @classmethod
    def configured(cls, tmp: Path, neurons: list[dict[str, Any]],
                   models: list[dict[str, Any]] | None = None, *,
                   auth: dict[str, Any] | None = None, nofile: int | None = None,
                   **gateway: Any) -> GatewayProcess:
        """With a config file: `neurons`, `models` (default PROFILES), short poll and
        keepalive intervals, and `gateway` over them; `auth` is its `[auth]` table."""
        config = tmp / f"cortex-{free_port()}.toml"
        config.write_bytes(msgspec.toml.encode({
            "models": models or PROFILES,
            "gateway": {"metrics_listen": f"127.0.0.1:{free_port()}", "poll_interval": 0.25,
                        "keepalive_interval": 0.5, "load_timeout": 30.0, **gateway},
            "neurons": neurons, **({"auth": auth} if auth is not None else {})}))
        return cls(tmp, ["--config", str(config)], nofile=nofile)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, check: Callable[[httpx.Client], bool], what: str,
             timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log()
                with contextlib.suppress(httpx.HTTPError):
                    if check(client):
                        return
                time.sleep(0.1)
        raise TimeoutError(f"timed out waiting until {what}:\n{self.log()}")

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        """SIGTERM (the gateway drains), SIGKILL after 30 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def nodes_up(count: int) -> Callable[[httpx.Client], bool]:
    return lambda client: bool(client.get("/health").json()["nodes_up"] == count)


@contextlib.contextmanager
def served(tmp: Path, neurons: list[dict[str, Any]], *, up: int | None = None,
           profiles: list[dict[str, Any]] | None = None,
           gateway: dict[str, Any] | None = None, auth: dict[str, Any] | None = None,
           nofile: int | None = None) -> Iterator[GatewayProcess]:
    """A running gateway (`GatewayProcess.configured`); waits until `up` nodes (default:
    all) are live."""
    process = GatewayProcess.configured(tmp, neurons, profiles, auth=auth, nofile=nofile,
                                        **(gateway or {}))
    try:
        process.wait(nodes_up(len(neurons) if up is None else up), "the neurons are up")
        yield process
    finally:
        process.stop()
