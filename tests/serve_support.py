"""`cortex serve --config` as a real process over synthetic neurons (no model needed):
what the limits, secret and fuzz tests run against, hypercorn settings included."""

from __future__ import annotations

import contextlib
import os
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


class ServedGateway:
    """A `cortex serve --config` subprocess on a free loopback port."""

    def __init__(self, tmp: Path, neurons: list[dict[str, Any]], *,
                 gateway: dict[str, Any] | None = None,
                 profiles: list[dict[str, Any]] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models = tmp / f"models-{self.port}.toml"
        models.write_bytes(msgspec.toml.encode({"models": profiles or PROFILES}))
        config = tmp / f"cortex-{self.port}.toml"
        config.write_bytes(msgspec.toml.encode({
            "models": models.name,
            "gateway": {"listen": f"127.0.0.1:{self.port}",
                        "metrics_listen": f"127.0.0.1:{free_port()}",
                        "poll_interval": 0.25, "keepalive_interval": 0.5,
                        "load_timeout": 30.0, **(gateway or {})},
            "neurons": neurons}))
        self.log_path = tmp / f"gateway-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cortex.cli", "serve", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ})

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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def nodes_up(count: int) -> Callable[[httpx.Client], bool]:
    return lambda client: bool(client.get("/health").json()["nodes_up"] == count)


@contextlib.contextmanager
def served(tmp: Path, neurons: list[dict[str, Any]], *, up: int | None = None,
           **kwargs: Any) -> Iterator[ServedGateway]:
    """A running gateway; waits until `up` nodes (default: all) are live."""
    gateway = ServedGateway(tmp, neurons, **kwargs)
    try:
        gateway.wait(nodes_up(len(neurons) if up is None else up), "the neurons are up")
        yield gateway
    finally:
        gateway.stop()
