"""`cortex status` against a real gateway and neuron: `--json`, the table with memory
bars, and `--watch` redrawing until `--count` or Ctrl-C. Also the traffic rates that
/admin/fleet carries (cortex.gateway.traffic) and the table's GPU rows, from a GPU node's shape."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import click
import pytest

from cortex.cli.status import bar, render
from cortex.gateway.traffic import Traffic
from cortex.records import RequestRecord

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, complete, profile, reset, running_gateway

model = pytest.mark.model



@pytest.fixture
def empty(neuron: NeuronProcess) -> NeuronProcess:
    reset(neuron)
    return neuron


async def cortex(gw: RunningGateway, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", "status", "--url", gw.url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode()
    return out.decode()


@model
@pytest.mark.anyio
async def test_json_has_nodes_gpus_models_in_flight_and_token_rates(
        empty: NeuronProcess) -> None:
    async with running_gateway([("a", empty)], [profile("m")]) as gw:
        reply = await complete(gw.client, "m", max_tokens=4)
        assert reply.status_code == 200
        tokens = reply.json()["usage"]["completion_tokens"]
        assert tokens > 0

        fleet = json.loads(await cortex(gw, "--json"))
        (node,) = fleet["nodes"]
        assert node["name"] == "a" and node["up"] is True
        assert node["budget_bytes"] > 0 and node["reserved_bytes"] > 0
        # A CPU-only neuron reports no GPUs; a GPU one reports each with its memory.
        assert node["cpu_only"] is True or node["gpus"]
        for gpu in node["gpus"]:
            assert gpu["memory_total"] >= gpu["memory_used"] >= 0
        (loaded,) = node["models"]
        assert loaded["id"] == "m" and loaded["state"] == "ready"
        assert node["in_flight"] == {}
        traffic = fleet["traffic"]
        assert traffic["requests_total"] == 1
        assert traffic["output_tokens_total"] == tokens
        assert traffic["output_tokens_per_second"] > 0
        assert traffic["models"]["m"]["output_tokens_per_second"] > 0


@model
@pytest.mark.anyio
async def test_table_shows_memory_bars_models_and_traffic(empty: NeuronProcess) -> None:
    async with running_gateway([("a", empty)], [profile("m")]) as gw:
        assert (await complete(gw.client, "m")).status_code == 200
        text = await cortex(gw)
        node_row = next(line for line in text.splitlines() if line.startswith("a "))
        assert "up" in node_row and "GiB" in node_row and "[" in node_row
        model_row = next(line for line in text.splitlines() if line.startswith("m "))
        assert "ready" in model_row
        assert "CPU only" in text or "MEMORY USED" in text
        assert "traffic (last" in text and "since start: 1 requests" in text


@model
@pytest.mark.anyio
async def test_watch_redraws_until_count(empty: NeuronProcess) -> None:
    async with running_gateway([("a", empty)], [profile("m")]) as gw:
        text = await cortex(gw, "--watch", "0.2", "--count", "2")
        assert text.count(f"cortex status  {gw.url}") == 2
        assert text.count("NODE") == 2

        lines = (await cortex(gw, "--json", "--watch", "0.2", "--count", "3")).splitlines()
        assert len(lines) == 3
        assert all(json.loads(line)["nodes"][0]["name"] == "a" for line in lines)


@model
@pytest.mark.anyio
async def test_watch_shows_changes_and_stops_cleanly_on_ctrl_c(empty: NeuronProcess) -> None:
    async with running_gateway([("a", empty)], [profile("m")]) as gw:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cortex.cli", "status", "--url", gw.url, "--watch", "0.2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        try:
            async def frame_line(prefix: str, *words: str) -> None:
                while True:
                    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
                    assert line, "cortex status --watch exited"
                    if line.startswith(prefix) and all(w in line for w in words):
                        return

            await frame_line("no models loaded")
            assert (await gw.client.post("/admin/models/m/load")).status_code == 200
            await frame_line("m ", "ready")  # a later frame shows the load
        finally:
            process.send_signal(signal.SIGINT)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        assert b"Traceback" not in rest


def test_watch_needs_a_positive_interval_and_count_needs_watch() -> None:
    from click.testing import CliRunner

    from cortex.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["status", "--count", "2"]).exit_code == 2
    assert runner.invoke(main, ["status", "--watch", "0"]).exit_code == 2


# --- rendering a GPU node, and the traffic window (no gateway) ---------------------------

H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * 2**30,
        "memory_used": 20 * 2**30, "memory_free": 60 * 2**30, "utilization": 37,
        "driver": "550.54", "uuid": "GPU-0"}


def gpu_fleet() -> dict[str, Any]:
    """/admin/fleet's shape for a two-GPU node holding one model (as a neuron reports it)."""
    return {"nodes": [{
        "name": "gpu-1", "endpoint": "http://10.0.0.1:13131", "up": True, "failures": 0,
        "last_error": None, "cycles": 0, "cpu_only": False, "version": "0.1.0",
        "gpus": [H100, {**H100, "index": 1, "memory_used": 80 * 2**30, "utilization": None}],
        "budget_bytes": 150 * 2**30, "reserved_bytes": 75 * 2**30,
        "models": [{"id": "llama-70b", "state": "ready", "n_ctx": 8192, "slots": 4,
                    "estimate": {"total": 75 * 2**30}, "in_flight": 2, "queued": 1,
                    "idle_seconds": 0.0, "ttl": 600.0, "expires_in": 600.0}],
        "in_flight": {"llama-70b": 2}, "loading": [], "unloading": []}],
        "loads": [], "routing": "affinity", "eviction": "lru",
        "traffic": {"window_seconds": 60, "requests_per_second": 0.5,
                    "input_tokens_per_second": 80.0, "output_tokens_per_second": 42.5,
                    "requests_total": 30, "input_tokens_total": 4800,
                    "output_tokens_total": 2550,
                    "models": {"llama-70b": {"requests_per_second": 0.5,
                                             "output_tokens_per_second": 42.5}}}}


def test_table_draws_a_memory_bar_per_gpu() -> None:
    lines = render(gpu_fleet()).splitlines()
    first = next(line for line in lines if line.startswith("gpu-1:0 "))
    second = next(line for line in lines if line.startswith("gpu-1:1 "))
    assert bar(20, 80) in first and "20.00/80.00 GiB" in first and "37%" in first
    assert bar(80, 80) in second and second.rstrip().endswith("-")
    node = next(line for line in lines if line.startswith("gpu-1 "))
    assert bar(75, 150) in node and "75.00/150.00 GiB" in node
    model_row = next(line for line in lines if line.startswith("llama-70b "))
    assert model_row.split()[-3:] == ["42.5", "-", "10m00s"]  # TOK/S, IDLE (busy), UNTIL
    assert "0.50 req/s, 42.5 tokens/s out" in render(gpu_fleet())


def wide_fleet() -> dict[str, Any]:
    """gpu_fleet with long names, an idle model, a pinned one, one without a TTL, and a
    node that is down."""
    fleet = gpu_fleet()
    node = fleet["nodes"][0]
    node["name"] = "gpu-node-in-rack-seven"
    node["endpoint"] = "http://gpu-node-in-rack-seven.example.internal:13131"
    base = node["models"][0]
    node["models"] = [
        {**base, "id": "meta-llama-3.1-70b-instruct-q4_k_m", "in_flight": 0, "queued": 0,
         "idle_seconds": 75.0, "expires_in": 525.0},
        {**base, "id": "pinned-model", "in_flight": 0, "queued": 0, "pinned": True,
         "idle_seconds": 4000.0, "expires_in": None},
        {**base, "id": "no-ttl", "in_flight": 0, "queued": 0, "idle_seconds": 30.0,
         "ttl": None, "expires_in": None}]
    fleet["nodes"].append({
        **node, "name": "gpu-2", "endpoint": "http://10.0.0.2:13131", "up": False,
        "last_error": "cannot connect to neuron gpu-2 at http://10.0.0.2:13131: "
                      "Connection refused", "gpus": [], "cpu_only": None, "models": [],
        "in_flight": {}, "reserved_bytes": 0, "budget_bytes": 0})
    return fleet


@pytest.mark.parametrize("width", [80, 100, 132])
def test_the_table_fits_the_terminal_down_to_80_columns(width: int) -> None:
    unbounded = render(wide_fleet())
    assert max(len(line) for line in unbounded.splitlines()) > width  # there is work to do
    text = render(wide_fleet(), width=width)
    assert max(len(line) for line in text.splitlines()) <= width, text
    rows = text.splitlines()
    idle = next(line for line in rows if line.startswith("meta-llam"))
    assert idle.split()[-2:] == ["1m15s", "8m45s"]  # IDLE, UNTIL survive every width
    assert next(line for line in rows if line.startswith("pinned-model")).endswith("pinned")
    no_ttl = next(line for line in rows if line.startswith("no-ttl"))
    assert no_ttl.split()[-2:] == ["30s", "-"]
    assert any(line.startswith("gpu-2 ") and "DOWN" in line for line in rows)
    assert any(line.startswith("gpu-2 is down: cannot connect") for line in rows)


def test_status_fits_columns_from_the_environment() -> None:
    from click.testing import CliRunner

    from cortex.cli.status import show

    runner = CliRunner(env={"COLUMNS": "80"})

    @click.command()
    def once() -> None:
        show(wide_fleet, url="http://gateway", as_json=False, watch=None, count=None)

    out = runner.invoke(once).output
    assert "UNTIL" in out and max(len(line) for line in out.splitlines()) <= 80, out


def test_bars_are_proportional_and_fall_back_to_ascii() -> None:
    assert bar(1, 4, width=8) == "[██░░░░░░]  25%"
    assert bar(5, 4, width=4) == "[████] 100%"
    assert bar(0, 0, width=4) == "[░░░░]   0%"
    assert bar(1, 2, width=4, unicode=False) == "[##..]  50%"


def record(model: str, tokens: int, node: str | None = "a") -> RequestRecord:
    return RequestRecord(request_id="r", model=model, node=node, dialect="openai",
                         status=200, stream=False, prompt_tokens=3, completion_tokens=tokens)


def test_a_stream_counts_while_it_runs_and_its_usage_corrects_the_count() -> None:
    now = [100.0]
    traffic = Traffic(window=10.0, clock=lambda: now[0])
    running = record("m", 0)
    flow = traffic.flow(running)  # first byte: the request counts from here
    now[0] = 102.0
    flow.add(6)
    now[0] = 104.0
    stats = traffic.describe()
    assert stats["requests_total"] == 0  # not finished
    assert stats["requests_per_second"] == 0.25 and stats["output_tokens_per_second"] == 1.5
    assert stats["models"]["m"]["output_tokens_per_second"] == 1.5
    assert traffic.rates() == {"m": 0.25}  # the cost policy sees the stream's demand now
    running.completion_tokens = 8  # the neuron's usage: 8, where 6 frames were seen
    traffic.request_finished(running)
    stats = traffic.describe()
    assert stats["requests_total"] == 1 and stats["output_tokens_total"] == 8
    assert stats["requests_per_second"] == 0.25 and stats["output_tokens_per_second"] == 2.0
    assert traffic.rates() == {"m": 0.25}  # counted once


def test_tokens_nobody_looked_at_for_a_while_spread_over_the_time_they_took() -> None:
    now = [0.0]
    traffic = Traffic(window=10.0, clock=lambda: now[0])
    flow = traffic.flow(record("m", 0))
    now[0] = 99.5
    flow.add(1000)  # ten tokens a second for 100 seconds, first looked at now
    rate = traffic.describe()["models"]["m"]["output_tokens_per_second"]
    assert rate == pytest.approx(10.0, rel=0.15)  # not 1000 tokens in the last 10 s


def test_traffic_averages_over_the_window_and_keeps_totals() -> None:
    now = [100.0]
    traffic = Traffic(window=10.0, clock=lambda: now[0])
    now[0] = 105.0  # younger than the window: rates over its 5 seconds
    traffic.request_finished(record("m", 20))
    traffic.request_finished(record("ghost", 0, node=None))  # refused: no model rate
    stats = traffic.describe()
    assert stats["window_seconds"] == 5.0
    assert stats["requests_per_second"] == 0.4 and stats["output_tokens_per_second"] == 4.0
    assert stats["models"] == {"m": {"requests_per_second": 0.2,
                                     "output_tokens_per_second": 4.0}}
    now[0] = 116.0  # both requests left the window; the totals stay
    stats = traffic.describe()
    assert stats["requests_per_second"] == 0 and stats["models"] == {}
    assert stats["requests_total"] == 2 and stats["output_tokens_total"] == 20


@pytest.mark.anyio
async def test_status_sends_the_admin_key_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_ADMIN_KEYS", "status-admin-key")
    async with running_gateway([], []) as gw:
        monkeypatch.delenv("CORTEX_ADMIN_KEY", raising=False)
        refused = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cortex.cli", "status", "--url", gw.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(refused.communicate(), 120)
        assert refused.returncode == 1 and b"401" in out
        monkeypatch.setenv("CORTEX_ADMIN_KEY", "status-admin-key")
        assert json.loads(await cortex(gw, "--json"))["nodes"] == []
