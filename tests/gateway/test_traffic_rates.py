"""Traffic.rates: the recent requests per second per model that the `cost` eviction
policy weighs (served requests only, over the window, forgotten once out of it)."""

from __future__ import annotations

from cortex.gateway.traffic import Traffic
from cortex.records import RequestRecord


def served(model: str, node: str | None = "a") -> RequestRecord:
    return RequestRecord(request_id="r", model=model, node=node, dialect="openai",
                         status=200, stream=False)


def test_rates_per_model_over_the_window() -> None:
    now = [100.0]
    traffic = Traffic(window=10.0, clock=lambda: now[0])
    now[0] = 110.0
    for model in ("hot", "hot", "hot", "cold"):
        traffic.request_finished(served(model))
    traffic.request_finished(served("refused", node=None))  # never reached a model
    assert traffic.rates() == {"hot": 0.3, "cold": 0.1}
    now[0] = 115.0
    traffic.request_finished(served("cold"))
    assert traffic.rates() == {"hot": 0.3, "cold": 0.2}
    now[0] = 120.5  # the first four left the window
    assert traffic.rates() == {"cold": 0.1}
    assert traffic.describe()["models"]["cold"]["requests_per_second"] == 0.1
