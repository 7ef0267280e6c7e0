"""cortex.gateway.series: the per-request counters and histograms that replace seven
OpenTelemetry SDK calls per request. The exposition must read as the SDK's did."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cortex.gateway.series import Histogram, RequestSeries

KEY = ("openai", "m", "n1", "200")


def _families(series: RequestSeries) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]],
                                                        float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(series)
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(family.name, {})[
                (sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    histogram = Histogram((0.1, 0.5, 1.0))
    for value in (0.1, 0.2, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 1.0), ("0.5", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert histogram.sum == 8.3


def test_counters_and_histograms_add_up_per_label_set() -> None:
    series = RequestSeries(duration=(0.1, 1.0), queue=(0.1,), ttft=(0.05, 0.5),
                           tpot=(0.01, 0.1))
    series.observe(KEY, prompt_tokens=3, completion_tokens=5, duration=0.2, queue=0.0,
                   retries=0, ttft=0.04)
    series.observe(KEY, prompt_tokens=2, completion_tokens=1, duration=2.0, queue=0.3,
                   retries=1, ttft=None)
    other = ("anthropic", "m", "n1", "529")
    series.observe(other, prompt_tokens=0, completion_tokens=0, duration=0.01, queue=0.0,
                   retries=0, ttft=None)
    got = _families(series)
    labels = (("dialect", "openai"), ("model", "m"), ("node", "n1"), ("status", "200"))
    assert got["cortex_requests"][("cortex_requests_total", labels)] == 2
    assert got["cortex_input_tokens"][("cortex_input_tokens_total", labels)] == 5
    assert got["cortex_output_tokens"][("cortex_output_tokens_total", labels)] == 6
    duration = got["cortex_request_duration_seconds"]
    assert duration[("cortex_request_duration_seconds_bucket", (*labels[:1], ("le", "0.1"),
                                                                 *labels[1:]))] == 0
    assert duration[("cortex_request_duration_seconds_bucket", (*labels[:1], ("le", "1.0"),
                                                                 *labels[1:]))] == 1
    assert duration[("cortex_request_duration_seconds_count", labels)] == 2
    assert duration[("cortex_request_duration_seconds_sum", labels)] == 2.2
    # Only streamed requests have a TTFT; per-token time needs two tokens or more.
    assert got["cortex_time_to_first_token_seconds"][
        ("cortex_time_to_first_token_seconds_count", labels)] == 1
    tpot = got["cortex_time_per_output_token_seconds"]
    assert tpot[("cortex_time_per_output_token_seconds_sum", labels)] == (0.2 - 0.04) / 4
    # Retries appear for the label sets that had some, as the SDK's counter did.
    retries = got["cortex_upstream_retries"]
    assert list(retries.values()) == [1]
    other_labels = (("dialect", "anthropic"), ("model", "m"), ("node", "n1"), ("status", "529"))
    assert got["cortex_requests"][("cortex_requests_total", other_labels)] == 1


def test_nothing_observed_renders_nothing() -> None:
    series = RequestSeries(duration=(1.0,), queue=(1.0,), ttft=(1.0,), tpot=(1.0,))
    assert _families(series) == {}
