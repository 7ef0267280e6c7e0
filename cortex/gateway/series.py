"""Per-request series: counted in plain Python, rendered by prometheus_client at scrape.

The OpenTelemetry SDK spends about 10 µs in every `add` or `record` (attribute
cleaning and hashing, locks, exemplar checks), and a finished request feeds seven of
them: a fifth of the gateway's CPU per request under load (docs/benchmarks.md). The
series a request touches are therefore kept here, one dict lookup and a few integer
increments per request, and handed to the same private Prometheus registry as metric
families, so the exposition (names, HELP, TYPE, buckets) is what the OpenTelemetry
exporter would print. Rare events (loads, evictions) and the fleet gauges stay on
OpenTelemetry instruments (cortex.metrics).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["Histogram", "RequestSeries"]


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (`+Inf`, `0.05`, `1.0`)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text

LABELS = ("dialect", "model", "node", "status")
Key = tuple[str, str, str, str]


class Histogram:
    """Fixed buckets, Prometheus semantics (a value equal to a bound falls in it)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((_le(bound), float(running)))
        return out


class _Series:
    __slots__ = ("duration", "input_tokens", "output_tokens", "queue", "requests", "retries",
                 "tpot", "ttft")

    def __init__(self, buckets: dict[str, Sequence[float]]) -> None:
        self.requests = self.input_tokens = self.output_tokens = self.retries = 0
        self.duration = Histogram(buckets["duration"])
        self.queue = Histogram(buckets["queue"])
        self.ttft: Histogram | None = None
        self.tpot: Histogram | None = None


class RequestSeries(Collector):
    """What finished requests add up to, per (dialect, model, node, status)."""

    def __init__(self, *, duration: Sequence[float], queue: Sequence[float],
                 ttft: Sequence[float], tpot: Sequence[float]) -> None:
        self._buckets = {"duration": duration, "queue": queue, "ttft": ttft, "tpot": tpot}
        self._series: dict[Key, _Series] = {}

    def observe(self, key: Key, *, prompt_tokens: int, completion_tokens: int,
                duration: float, queue: float, retries: int, ttft: float | None) -> None:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self._buckets)
        series.requests += 1
        series.input_tokens += prompt_tokens
        series.output_tokens += completion_tokens
        series.retries += retries
        series.duration.observe(duration)
        series.queue.observe(queue)
        if ttft is not None:
            if series.ttft is None:
                series.ttft = Histogram(self._buckets["ttft"])
            series.ttft.observe(ttft)
            decoding = duration - ttft
            if completion_tokens > 1 and decoding > 0:
                if series.tpot is None:
                    series.tpot = Histogram(self._buckets["tpot"])
                series.tpot.observe(decoding / (completion_tokens - 1))

    def collect(self) -> Iterator[Metric]:
        counters: dict[str, CounterMetricFamily] = {
            "requests": CounterMetricFamily(
                "cortex_requests", "Requests finished, by final status", labels=LABELS),
            "input_tokens": CounterMetricFamily(
                "cortex_input_tokens", "Prompt tokens (neuron usage)", labels=LABELS),
            "output_tokens": CounterMetricFamily(
                "cortex_output_tokens", "Generated tokens (the usage the client received)",
                labels=LABELS),
            "retries": CounterMetricFamily(
                "cortex_upstream_retries",
                "Further nodes tried after a failure before the first byte", labels=LABELS),
        }
        histograms: dict[str, HistogramMetricFamily] = {
            "duration": HistogramMetricFamily(
                "cortex_request_duration_seconds",
                "Arrival to last byte, cold loads and retries included", labels=LABELS),
            "queue": HistogramMetricFamily(
                "cortex_request_queue_time_seconds",
                "Arrival until a node was chosen: admission and cold-load waits",
                labels=LABELS),
            "ttft": HistogramMetricFamily(
                "cortex_time_to_first_token_seconds",
                "Arrival to the first token's bytes (streamed requests only)", labels=LABELS),
            "tpot": HistogramMetricFamily(
                "cortex_time_per_output_token_seconds",
                "Decode time per token after the first (streams of 2+ tokens)",
                labels=LABELS),
        }
        for key, series in self._series.items():
            labels = list(key)
            for name, family in counters.items():
                value = getattr(series, name)
                if value or name != "retries":  # retries appear once there are some
                    family.add_metric(labels, float(value))
            for name, histogram_family in histograms.items():
                histogram = getattr(series, name)
                if histogram is not None:
                    histogram_family.add_metric(labels, histogram.buckets(), histogram.sum)
        yield from (f for f in counters.values() if f.samples)
        yield from (f for f in histograms.values() if f.samples)
