"""Metrics and observers: real requests through a real gateway and real neurons, then
the gateway's and the neuron's /metrics must have moved by exactly what happened.

Neuron `a` has room to spare; `b`'s budget holds one copy of the bundled Gemma
(n_ctx 2048) but not two, so a second model there must evict the first."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex import FleetEvent, GatewayConfig, RequestRecord, build_plugin_manager, hookimpl
from cortex.gateway import create_app
from cortex.gateway.metrics import DURATION_BUCKETS, METRICS_PLUGIN, TTFT_BUCKETS, GatewayMetrics
from cortex_plugins.observers import request_line

from ..conftest import ROOT, NeuronProcess
from ..gateway_support import (
    RunningGateway,
    complete,
    profile,
    reset,
    roomy_and_tight,
    running_gateway,
    sse_data,
    sse_lines,
    wait_until,
)

# --- reading a scrape ------------------------------------------------------------------------

class Scrape:
    """One Prometheus exposition, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text)
                        for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return sum(s.value for s in self.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and labels.items() <= s.labels.items() for s in self.samples)


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.get(url)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return Scrape(reply.text)


class Billing:
    """A third-party observer, registered like any plugin."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    @hookimpl
    def request_finished(self, record: RequestRecord) -> None:
        self.records.append(record)


# --- fleet -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
          cache_dir: Path) -> Iterator[dict[str, NeuronProcess]]:
    with roomy_and_tight(tmp_path_factory.mktemp("metrics"), cache_dir, 1.5) as started:
        yield started


@pytest.fixture
def empty(fleet: dict[str, NeuronProcess]) -> None:
    reset(*fleet.values())


async def finished(gw: RunningGateway, count: int) -> None:
    """request_finished runs as a response ends, maybe after the client has read it all."""
    async def done() -> bool:
        return len(gw.recorder.records) >= count
    await wait_until(done, timeout=30, what=f"{count} requests finished")


# --- gateway + neuron, end to end ----------------------------------------------------------------

@pytest.mark.usefixtures("empty")
@pytest.mark.model
@pytest.mark.anyio
async def test_counters_equal_what_clients_received(
        fleet: dict[str, NeuronProcess], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cortex.requests")
    billing = Billing()
    async with running_gateway(list(fleet.items()), [profile("m", neurons=["a"])],
                               plugins=[billing], metrics=True) as gw:
        streamed = await gw.client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "Count to ten"}],
            "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}})
        assert streamed.status_code == 200
        usages = [d["usage"] for d in sse_data(sse_lines(streamed.text))
                  if isinstance(d, dict) and d.get("usage")]
        stream_usage = usages[-1]
        whole = await complete(gw.client, "m", max_tokens=4, prompt="Once upon a time")
        assert whole.status_code == 200
        whole_usage = whole.json()["usage"]
        await finished(gw, 2)
        assert gw.metrics_url is not None
        metrics = await scrape(gw.metrics_url)
        neuron = await scrape(f"{fleet['a'].url}/metrics")

    out = stream_usage["completion_tokens"] + whole_usage["completion_tokens"]
    prompt = stream_usage["prompt_tokens"] + whole_usage["prompt_tokens"]
    assert out > 2
    ok = {"model": "m", "node": "a", "dialect": "openai", "status": "200"}
    assert metrics.value("cortex_requests_total", **ok) == 2
    assert metrics.value("cortex_output_tokens_total", **ok) == out
    assert metrics.value("cortex_input_tokens_total", **ok) == prompt
    assert metrics.value("cortex_request_duration_seconds_count", **ok) == 2
    assert metrics.value("cortex_request_queue_time_seconds_count", **ok) == 2
    # Only the stream has a first token apart from its last byte.
    assert metrics.value("cortex_time_to_first_token_seconds_count", **ok) == 1
    assert metrics.value("cortex_time_per_output_token_seconds_count", **ok) == 1
    assert metrics.value("cortex_time_to_first_token_seconds_bucket", le="600.0", **ok) == 1
    assert metrics.value("cortex_model_loads_total", model="m", node="a") == 1
    assert metrics.value("cortex_model_load_duration_seconds_count", model="m", node="a") == 1
    assert metrics.value("cortex_upstream_retries_total") == 0
    assert metrics.value("cortex_node_up", node="a") == 1
    assert metrics.value("cortex_node_up", node="b") == 1
    assert metrics.value("cortex_node_models_loaded", node="a") == 1
    assert metrics.value("cortex_node_models_loaded", node="b") == 0
    assert metrics.value("cortex_node_memory_estimated_bytes", node="a") > 0
    assert metrics.value("cortex_node_memory_budget_bytes", node="b") > 0
    assert metrics.value("cortex_requests_in_flight", node="a", model="m") == 0

    # The neuron counted the same tokens: every one it generated reached the client.
    assert neuron.value("cortex_neuron_generated_tokens_total", model="m") == out
    assert 0 < neuron.value("cortex_neuron_prefill_tokens_total", model="m") <= prompt
    assert neuron.value("cortex_neuron_model_slots", model="m") == 1
    assert neuron.value("cortex_neuron_model_busy_slots", model="m") == 0
    assert neuron.value("cortex_neuron_model_queue_depth", model="m") == 0
    assert neuron.value("cortex_neuron_kv_cache_capacity_tokens", model="m") == 2048
    assert 0 < neuron.value("cortex_neuron_kv_cache_used_tokens", model="m") <= 2048
    assert neuron.value("cortex_neuron_memory_budget_bytes") > 0
    assert neuron.value("cortex_neuron_memory_reserved_bytes") > 0
    assert neuron.value("cortex_neuron_ram_total_bytes") > 0

    # A third-party observer got one record per request, carrying the client's usage.
    by_stream = {r.stream: r for r in billing.records}
    assert len(billing.records) == 2 and set(by_stream) == {True, False}
    for record, usage, reply in ((by_stream[True], stream_usage, streamed),
                                 (by_stream[False], whole_usage, whole)):
        assert (record.model, record.node, record.dialect, record.status) == \
            ("m", "a", "openai", 200)
        assert record.completion_tokens == usage["completion_tokens"]
        assert record.prompt_tokens == usage["prompt_tokens"]
        assert record.request_id == reply.headers["x-request-id"]
        assert record.duration_seconds >= record.queue_seconds
    assert by_stream[True].ttft_seconds is not None
    assert by_stream[False].ttft_seconds is None

    # The default log observer wrote one line per request.
    lines = [r for r in caplog.records if r.name == "cortex.requests"]
    assert [line.getMessage() for line in lines] == [request_line(r) for r in billing.records]
    for record in billing.records:
        assert f"request_id={record.request_id} " in request_line(record)
        assert f"tokens_out={record.completion_tokens} " in request_line(record)


@pytest.mark.usefixtures("empty")
@pytest.mark.model
@pytest.mark.anyio
async def test_a_burst_to_a_cold_model_counts_one_load(
        fleet: dict[str, NeuronProcess]) -> None:
    async with running_gateway(list(fleet.items()), [profile("cold", neurons=["a"])],
                               metrics=True) as gw:
        replies = await asyncio.gather(*(complete(gw.client, "cold", max_tokens=3)
                                         for _ in range(4)))
        assert [r.status_code for r in replies] == [200] * 4
        await finished(gw, 4)
        assert gw.metrics_url is not None
        metrics = await scrape(gw.metrics_url)
    assert len(gw.recorder.kinds("loaded", "cold")) == 1
    assert metrics.value("cortex_model_loads_total", model="cold") == 1
    assert metrics.value("cortex_model_load_duration_seconds_count", model="cold") == 1
    assert metrics.value("cortex_model_load_failures_total") == 0
    assert metrics.value("cortex_requests_total", model="cold", status="200") == 4
    assert metrics.value("cortex_output_tokens_total", model="cold") == \
        sum(r.json()["usage"]["completion_tokens"] for r in replies)


@pytest.mark.usefixtures("empty")
@pytest.mark.model
@pytest.mark.anyio
async def test_evictions_are_counted_with_their_reason(
        fleet: dict[str, NeuronProcess]) -> None:
    profiles = [profile("e1", neurons=["b"]), profile("e2", neurons=["b"])]
    async with running_gateway(list(fleet.items()), profiles, eviction="lru",
                               metrics=True) as gw:
        for model in ("e1", "e2"):
            assert (await complete(gw.client, model)).status_code == 200, model
        assert (await gw.client.post("/admin/models/e2/unload")).status_code == 200
        assert gw.metrics_url is not None
        metrics = await scrape(gw.metrics_url)
    assert [(e.model, e.reason) for e in gw.recorder.kinds("evicted")] == [("e1", "lru")]
    assert metrics.value("cortex_model_evictions_total", node="b", model="e1",
                         reason="lru") == 1
    assert metrics.value("cortex_model_evictions_total", node="b", model="e2",
                         reason="manual") == 1
    assert metrics.value("cortex_model_evictions_total") == 2
    assert metrics.value("cortex_model_unloads_total") == 2
    assert metrics.value("cortex_model_loads_total", node="b") == 2
    assert metrics.value("cortex_node_models_loaded", node="b") == 0


@pytest.mark.model
def test_the_neuron_echoes_the_request_id(fleet: dict[str, NeuronProcess]) -> None:
    reply = httpx.get(f"{fleet['a'].url}/health", headers={"x-request-id": "req-42"})
    assert reply.headers["x-request-id"] == "req-42"
    assert "x-request-id" not in httpx.get(f"{fleet['a'].url}/health").headers


# --- without a model -------------------------------------------------------------------------

def record(**fields: Any) -> RequestRecord:
    base: dict[str, Any] = {"request_id": "r1", "model": "m", "node": "a", "dialect": "openai",
                            "status": 200, "stream": True}
    return RequestRecord(**{**base, **fields})


def test_each_app_has_its_own_meters() -> None:
    apps = [create_app(GatewayConfig(), build_plugin_manager(entry_points=False))
            for _ in range(2)]
    first, second = (app.state.metrics for app in apps)
    assert isinstance(first, GatewayMetrics) and first is not second
    first.request_finished(record(completion_tokens=7))
    assert Scrape(first.prometheus.scrape()[0].decode()).value(
        "cortex_output_tokens_total") == 7
    assert not Scrape(second.prometheus.scrape()[0].decode()).has("cortex_output_tokens_total")


def test_blocking_the_metrics_plugin_turns_them_off() -> None:
    app = create_app(GatewayConfig(), build_plugin_manager(entry_points=False,
                                                           blocked=[METRICS_PLUGIN]))
    assert app.state.metrics is None


def test_histograms_span_cold_loads_and_long_generations() -> None:
    metrics = GatewayMetrics(list)
    metrics.request_finished(record(ttft_seconds=200.0, duration_seconds=500.0,
                                    completion_tokens=3))
    metrics.request_finished(record(ttft_seconds=0.02, duration_seconds=0.3,
                                    completion_tokens=3))
    scraped = Scrape(metrics.prometheus.scrape()[0].decode())
    bounds = {float(s.labels["le"]) for s in scraped.samples
              if s.name == "cortex_time_to_first_token_seconds_bucket"}
    assert bounds == {*TTFT_BUCKETS, float("inf")}
    assert min(TTFT_BUCKETS) <= 0.01 and max(TTFT_BUCKETS) >= 600
    assert max(DURATION_BUCKETS) >= 600
    assert scraped.value("cortex_time_to_first_token_seconds_bucket", le="0.025") == 1
    assert scraped.value("cortex_time_to_first_token_seconds_bucket", le="300.0") == 2
    assert scraped.value("cortex_request_duration_seconds_bucket", le="450.0") == 1
    assert scraped.value("cortex_request_duration_seconds_bucket", le="600.0") == 2
    metrics.close()


def test_fleet_events_map_to_lifecycle_counters() -> None:
    metrics = GatewayMetrics(list)
    for event in (FleetEvent(kind="loaded", node="a", model="x", seconds=2.0),
                  FleetEvent(kind="load_failed", node="a", model="y", reason="507"),
                  FleetEvent(kind="evicted", node="a", model="x", reason="priority"),
                  FleetEvent(kind="unloaded", node="a", model="z", reason="ttl"),
                  FleetEvent(kind="unloaded", node="a", model="z", reason="defrag"),
                  FleetEvent(kind="unloaded", node="a", model="w", reason="abandoned"),
                  FleetEvent(kind="node_down", node="a", reason="refused"),
                  FleetEvent(kind="node_up", node="a")):
        metrics.fleet_event(event)
    scraped = Scrape(metrics.prometheus.scrape()[0].decode())
    assert scraped.value("cortex_model_loads_total", model="x") == 1
    assert scraped.value("cortex_model_load_failures_total", model="y") == 1
    evictions = {s.labels["reason"]: s.value for s in scraped.samples
                 if s.name == "cortex_model_evictions_total"}
    assert evictions == {"priority": 1, "ttl": 1, "defrag": 1}  # abandoned is no eviction
    assert scraped.value("cortex_model_unloads_total") == 4
    assert scraped.value("cortex_node_transitions_total", node="a", state="down") == 1
    assert scraped.value("cortex_node_transitions_total", node="a", state="up") == 1
    metrics.close()


def test_request_line_is_logfmt_with_every_field() -> None:
    line = request_line(record(prompt_tokens=5, completion_tokens=9, ttft_seconds=0.25,
                               duration_seconds=1.5, queue_seconds=0.125, retries=1))
    fields = dict(part.split("=", 1) for part in line.split(" "))
    assert fields == {"request_id": "r1", "method": "POST", "path": "-", "model": "m",
                      "node": "a", "dialect": "openai",
                      "status": "200", "stream": "true", "tokens_in": "5", "tokens_out": "9",
                      "ttft": "0.250", "duration": "1.500", "queue": "0.125", "retries": "1"}
    spaced = request_line(record(model="my model", node=None, ttft_seconds=None))
    assert 'model="my model" node=- ' in spaced and " ttft=- " in spaced


def test_every_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    for module in ("cortex/gateway/metrics.py", "cortex_neuron/metrics.py"):
        names = set(re.findall(r'"(cortex_[a-z_]+)"', (ROOT / module).read_text()))
        assert len(names) > 10, module
        for name in names:
            assert f"`{name}" in doc, f"{name} ({module}) is not in docs/observability.md"


def test_made_up_model_names_do_not_mint_series() -> None:
    metrics = GatewayMetrics(list, known=lambda model: model == "m")
    metrics.request_finished(record(model="m", node=None, status=429))
    metrics.request_finished(record(model="no-such-model-1", node=None, status=404))
    metrics.request_finished(record(model="no-such-model-2", node=None, status=404))
    scraped = Scrape(metrics.prometheus.scrape()[0].decode())
    models = {s.labels["model"] for s in scraped.samples if s.name == "cortex_requests_total"}
    assert models == {"m", ""}
    assert scraped.value("cortex_requests_total", model="", status="404") == 2
    metrics.close()
