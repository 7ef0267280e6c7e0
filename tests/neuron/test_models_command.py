"""`neuron models`: a table with a header, `--json`, and the neuron's URL from
$NEURON_URL, against a real neuron process (the synthetic harness: no model needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ..conftest import NeuronProcess
from ..serve_support import synthetic_neuron

MODEL = {"id": "syn-one", "source": "synthetic:rate=0,tokens=4,bytes=1GiB",
         "harness": "synthetic", "n_ctx": 256, "slots": 2}


@pytest.fixture(scope="module")
def holding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    neuron = synthetic_neuron(tmp_path_factory.mktemp("models-command"), preload=[MODEL])
    try:
        deadline = time.monotonic() + 30
        while not any(m["state"] == "ready" for m in
                      httpx.get(f"{neuron.url}/models").json()["models"]):
            assert time.monotonic() < deadline, "the preload never became ready"
            time.sleep(0.1)
        yield neuron
    finally:
        neuron.stop()


def neuron_cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "models", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_models_prints_a_table_with_a_header(holding: NeuronProcess) -> None:
    header, row = neuron_cli("--url", holding.url).splitlines()
    assert header.split() == ["MODEL", "STATE", "N_CTX", "SLOTS", "MEMORY", "IN-FLIGHT",
                              "QUEUED", "LOADED", "IN", "PINNED"]
    assert row.split()[:4] == ["syn-one", "ready", "256", "2"]
    assert "GiB" in row
    # Columns line up under their headers.
    assert row.index("ready") == header.index("STATE")


def test_models_json_is_the_neurons_list(holding: NeuronProcess) -> None:
    (model,) = json.loads(neuron_cli("--url", holding.url, "--json"))
    assert model["id"] == "syn-one" and model["state"] == "ready" and model["slots"] == 2


def test_models_reads_the_url_from_neuron_url(holding: NeuronProcess) -> None:
    assert neuron_cli(env={"NEURON_URL": holding.url}).startswith("MODEL ")
    refused = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "models"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "NEURON_URL": "http://127.0.0.1:9"})
    assert refused.returncode == 1 and "http://127.0.0.1:9" in refused.stderr
