"""Recent traffic as JSON rates, for `cortex status` and the /ui dashboard.

Prometheus (cortex.metrics) holds the counters; turning them into rates needs a scraper
and PromQL. The CLI and the dashboard want "requests and tokens per second, now" from
one call to /admin/fleet, so this observer keeps the last minute of finished requests.
It is a cache like the others: a restarted gateway starts again from zero.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from cortex.hookspecs import hookimpl
from cortex.records import RequestRecord

__all__ = ["TRAFFIC_PLUGIN", "WINDOW_SECONDS", "Traffic"]

#: The name the gateway registers this observer under.
TRAFFIC_PLUGIN = "cortex.gateway.traffic"
#: Rates are averaged over this many seconds (or the gateway's age, if younger).
WINDOW_SECONDS = 60.0


class Traffic:
    """Finished requests of the last WINDOW_SECONDS, and totals since start.

    Tokens count when a request finishes, so a long stream shows up at its end.
    """

    def __init__(self, *, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._started = clock()
        # (finished at, model, prompt tokens, completion tokens)
        self._recent: collections.deque[tuple[float, str, int, int]] = collections.deque()
        self._per_model: collections.Counter[str] = collections.Counter()
        self.requests_total = 0
        self.input_tokens_total = 0
        self.output_tokens_total = 0

    @hookimpl
    def request_finished(self, record: RequestRecord) -> None:
        if record.kind != "inference":  # a token count is no request served
            return
        now = self._clock()
        self.requests_total += 1
        self.input_tokens_total += record.prompt_tokens
        self.output_tokens_total += record.completion_tokens
        model = record.model if record.node else ""
        self._recent.append((now, model, record.prompt_tokens, record.completion_tokens))
        self._per_model[model] += 1
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0][0] <= now - self.window:
            model = self._recent.popleft()[1]
            self._per_model[model] -= 1
            if not self._per_model[model]:
                del self._per_model[model]

    def _span(self, now: float) -> float:
        return max(1e-9, min(self.window, now - self._started))

    def rates(self) -> dict[str, float]:
        """Requests per second per model over the window, served requests only: the
        demand the `cost` eviction policy weighs (it reads one per placement, so this
        costs one entry per model, not per request)."""
        now = self._clock()
        self._prune(now)
        span = self._span(now)
        return {model: n / span for model, n in self._per_model.items() if model}

    def describe(self) -> dict[str, Any]:
        """Rates over the window, totals, and per-model rates (served requests only)."""
        now = self._clock()
        self._prune(now)
        span = self._span(now)
        per_model: dict[str, list[int]] = {}
        inputs = outputs = 0
        for _, model, prompt, completion in self._recent:
            inputs += prompt
            outputs += completion
            if model:
                counts = per_model.setdefault(model, [0, 0])
                counts[0] += 1
                counts[1] += completion
        return {
            "window_seconds": round(span, 3),
            "requests_per_second": round(len(self._recent) / span, 3),
            "input_tokens_per_second": round(inputs / span, 3),
            "output_tokens_per_second": round(outputs / span, 3),
            "requests_total": self.requests_total,
            "input_tokens_total": self.input_tokens_total,
            "output_tokens_total": self.output_tokens_total,
            "models": {model: {"requests_per_second": round(n / span, 3),
                               "output_tokens_per_second": round(tokens / span, 3)}
                       for model, (n, tokens) in sorted(per_model.items())},
        }
