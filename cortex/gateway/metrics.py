"""The gateway's metrics: OpenTelemetry instruments fed by its observer hookimpls.

The instruments are fed by the gateway's own hookimpls (`request_finished`,
`fleet_event`), which it registers on its plugin manager like any observer, and by
observable gauges that read the fleet view when Prometheus scrapes. The series every
request touches are counted by cortex.gateway.series instead, which is 30 times cheaper
per request than the SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from cortex.gateway.series import RequestSeries
from cortex.hookspecs import hookimpl
from cortex.metrics import Prometheus, histogram_view
from cortex.records import FleetEvent, RequestRecord

__all__ = [
    "DURATION_BUCKETS",
    "LOAD_BUCKETS",
    "METRICS_PLUGIN",
    "TPOT_BUCKETS",
    "TTFT_BUCKETS",
    "GatewayMetrics",
]

#: The name the gateway registers its metrics observer under; block it to turn them off.
METRICS_PLUGIN = "cortex.metrics"

# LLM work spans milliseconds (a warm first token) to minutes (a cold load of a big
# model, a long generation): the SDK's default buckets stop at 10 s.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                120.0, 300.0, 600.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                    180.0, 300.0, 450.0, 600.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Reasons an unload counts as an eviction; `abandoned` (a load nobody waited for) does not.
_NOT_EVICTIONS = {"abandoned"}


def _observe(read: Callable[[], Iterable[tuple[float, dict[str, str]]]]
             ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, labels) for value, labels in read()]
    return callback


FleetReader = Callable[[], list[dict[str, Any]]]


class GatewayMetrics:
    """The gateway's instruments, and the observer hookimpls that feed them.

    `fleet` returns the fleet view (`Fleet.describe()`); it is read on each scrape.
    `known` tells a model id from a name a client made up, which is labelled `""`, so
    clients cannot mint series.
    """

    def __init__(self, fleet: FleetReader, known: Callable[[str], bool] = bool) -> None:
        self._fleet = fleet
        self._known = known
        self.prometheus = Prometheus(views=[
            histogram_view("cortex_model_load_duration", LOAD_BUCKETS),
        ])
        # Per-request series: plain counters rendered at scrape (see cortex.gateway.series).
        self._series = RequestSeries(duration=DURATION_BUCKETS, queue=TTFT_BUCKETS,
                                     ttft=TTFT_BUCKETS, tpot=TPOT_BUCKETS)
        self.prometheus.registry.register(self._series)
        meter = self.prometheus.provider.get_meter("cortex.gateway")
        self._loads = meter.create_counter(
            "cortex_model_loads", description="Loads this gateway started that succeeded")
        self._load_seconds = meter.create_histogram(
            "cortex_model_load_duration", unit="s", description="Load time the neuron reported")
        self._load_failures = meter.create_counter(
            "cortex_model_load_failures", description="Loads that failed")
        self._unloads = meter.create_counter(
            "cortex_model_unloads", description="Unloads, by reason")
        self._evictions = meter.create_counter(
            "cortex_model_evictions", description="Models taken out by policy (lru, "
            "priority, ...), ttl, defrag or an admin (manual)")
        self._node_changes = meter.create_counter(
            "cortex_node_transitions", description="Nodes marked up or down")
        meter.create_observable_gauge(
            "cortex_node_up", callbacks=[_observe(self._nodes_up)],
            description="1 if the node answers, else 0")
        meter.create_observable_gauge(
            "cortex_node_models_loaded", callbacks=[_observe(self._models_loaded)],
            description="Models ready on the node")
        meter.create_observable_gauge(
            "cortex_node_memory_budget", unit="By", callbacks=[_observe(self._budget)],
            description="The node's memory budget")
        meter.create_observable_gauge(
            "cortex_node_memory_estimated", unit="By", callbacks=[_observe(self._estimated)],
            description="What resident models reserve: the neuron's estimates")
        meter.create_observable_gauge(
            "cortex_node_memory_used", unit="By", callbacks=[_observe(self._used)],
            description="Memory in use: NVML's on GPU nodes, models' measured on CPU nodes")
        meter.create_observable_gauge(
            "cortex_requests_in_flight", callbacks=[_observe(self._in_flight)],
            description="This gateway's requests in flight per node and model")

    # --- observers ------------------------------------------------------------------------

    @hookimpl
    def request_finished(self, record: RequestRecord) -> None:
        if record.kind != "inference":
            return
        model = record.model if record.node is not None or self._known(record.model) else ""
        self._series.observe(
            (record.dialect, model, record.node or "", str(record.status)),
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
            duration=record.duration_seconds, queue=record.queue_seconds,
            retries=record.retries, ttft=record.ttft_seconds)

    @hookimpl
    def fleet_event(self, event: FleetEvent) -> None:
        labels = {"node": event.node, "model": event.model or ""}
        if event.kind == "loaded":
            self._loads.add(1, labels)
            if event.seconds is not None:
                self._load_seconds.record(event.seconds, labels)
        elif event.kind == "load_failed":
            self._load_failures.add(1, labels)
        elif event.kind in ("unloaded", "evicted"):
            reason = {**labels, "reason": event.reason or "unknown"}
            self._unloads.add(1, reason)
            if event.kind == "evicted" or event.reason not in _NOT_EVICTIONS:
                self._evictions.add(1, reason)
        elif event.kind in ("node_up", "node_down"):
            self._node_changes.add(1, {"node": event.node,
                                       "state": "up" if event.kind == "node_up" else "down"})

    # --- the fleet view, read at scrape time --------------------------------------------------

    def _nodes_up(self) -> Iterable[tuple[float, dict[str, str]]]:
        return [(1.0 if n["up"] else 0.0, {"node": n["name"]}) for n in self._fleet()]

    def _models_loaded(self) -> Iterable[tuple[float, dict[str, str]]]:
        return [(float(sum(1 for m in n["models"] if m["state"] == "ready")),
                 {"node": n["name"]}) for n in self._fleet()]

    def _budget(self) -> Iterable[tuple[float, dict[str, str]]]:
        return [(float(n["budget_bytes"]), {"node": n["name"]}) for n in self._fleet()]

    def _estimated(self) -> Iterable[tuple[float, dict[str, str]]]:
        return [(float(n["reserved_bytes"]), {"node": n["name"]}) for n in self._fleet()]

    def _used(self) -> Iterable[tuple[float, dict[str, str]]]:
        out = []
        for n in self._fleet():
            if n["gpus"]:
                used = sum(g["memory_used"] for g in n["gpus"])
            else:
                used = sum(m.get("measured_bytes") or 0 for m in n["models"])
            out.append((float(used), {"node": n["name"]}))
        return out

    def _in_flight(self) -> Iterable[tuple[float, dict[str, str]]]:
        return [(float(count), {"node": n["name"], "model": model})
                for n in self._fleet()
                for model, count in ({m["id"]: 0 for m in n["models"]}
                                     | n["in_flight"]).items()]

    # --- serving ------------------------------------------------------------------------------

    def close(self) -> None:
        self.prometheus.close()
