"""Recent traffic as JSON rates, for `cortex status` and the /ui dashboard.

Prometheus (cortex.metrics) holds the counters; turning them into rates needs a scraper
and PromQL. The CLI and the dashboard want "requests and tokens per second, now" from
one call to /admin/fleet, so this observer keeps the last minute in one-second buckets.
It is a cache like the others: a restarted gateway starts again from zero.

A stream counts while it runs: the proxy opens a `Flow` at its first byte, which counts
the request there and each token frame as it passes (spread over the seconds they came
in whenever rates are asked for); the finished record then adds only what the frames
missed (the prompt, and the difference to the neuron's usage). So a five-minute stream
shows its tokens/s during those five minutes, not in one lump after.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from cortex.hookspecs import hookimpl
from cortex.records import RequestRecord

__all__ = ["TRAFFIC_PLUGIN", "WINDOW_SECONDS", "Flow", "Traffic"]

#: The name the gateway registers this observer under.
TRAFFIC_PLUGIN = "cortex.gateway.traffic"
#: Rates are averaged over this many seconds (or the gateway's age, if younger).
WINDOW_SECONDS = 60.0

# Per second: per model ("" for requests no node served), [requests, prompt, completion].
_Bucket = dict[str, list[float]]


class Flow:
    """One stream's tokens as they pass. Adding is one increment (it runs per chunk); the
    Traffic spreads what was added over the seconds since it last looked, when asked."""

    __slots__ = ("model", "settled", "settled_at", "tokens")

    def __init__(self, model: str, now: float) -> None:
        self.model, self.tokens, self.settled, self.settled_at = model, 0, 0, now

    def add(self, tokens: int) -> None:
        self.tokens += tokens


class Traffic:
    """Requests and tokens of the last WINDOW_SECONDS, and totals since start."""

    def __init__(self, *, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._started = clock()
        self._buckets: dict[int, _Bucket] = {}
        self._oldest = 0  # no bucket is older than this second
        # Requests per model in the buckets: rates() reads it per placement.
        self._requests: collections.Counter[str] = collections.Counter()
        # Streams under way, by the identity of their request's record.
        self._flows: dict[int, Flow] = {}
        self.requests_total = 0
        self.input_tokens_total = 0
        self.output_tokens_total = 0

    def _count(self, second: int, model: str, requests: int, prompt: float,
               completion: float) -> None:
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = {}
            self._oldest = min(self._oldest, second) if len(self._buckets) > 1 else second
        counts = bucket.setdefault(model, [0, 0, 0])
        if requests:
            counts[0] += requests
            self._requests[model] += requests
        counts[1] += prompt
        counts[2] += completion

    def flow(self, record: RequestRecord) -> Flow:
        """A served stream's first byte: the request counts from now, and so does each
        token the returned Flow is told of."""
        now = self._clock()
        flow = self._flows[id(record)] = Flow(record.model, now)
        self._count(int(now), record.model, 1, 0, 0)
        return flow

    def _settle(self, flow: Flow, now: float) -> None:
        """Spread the tokens a flow took since it was last settled evenly over the seconds
        in between (those still in the window)."""
        fresh = flow.tokens - flow.settled
        if fresh:
            first, last = int(flow.settled_at), int(now)
            share = fresh / (last - first + 1)
            for second in range(max(first, last - int(self.window)), last + 1):
                self._count(second, flow.model, 0, 0, share)
        flow.settled, flow.settled_at = flow.tokens, now

    @hookimpl
    def request_finished(self, record: RequestRecord) -> None:
        if record.kind != "inference":  # a token count is no request served
            return
        now = self._clock()
        flow = self._flows.pop(id(record), None)
        self.requests_total += 1
        self.input_tokens_total += record.prompt_tokens
        self.output_tokens_total += record.completion_tokens
        model = record.model if record.node else ""
        if flow is None:
            self._count(int(now), model, 1, record.prompt_tokens, record.completion_tokens)
        else:  # the frames counted were an estimate: the usage makes up the difference
            self._settle(flow, now)
            self._count(int(now), model, 0, record.prompt_tokens,
                        record.completion_tokens - flow.tokens)
        self._prune(now)

    def _prune(self, now: float) -> None:
        if self._oldest > now - self.window:
            return
        for second in [s for s in self._buckets if s <= now - self.window]:
            for model, counts in self._buckets.pop(second).items():
                if counts[0]:
                    self._requests[model] -= int(counts[0])
                    if not self._requests[model]:
                        del self._requests[model]
        self._oldest = min(self._buckets, default=int(now))

    def _span(self, now: float) -> float:
        return max(1e-9, min(self.window, now - self._started))

    def rates(self) -> dict[str, float]:
        """Requests per second per model over the window, served requests only: the
        demand the `cost` eviction policy weighs (it reads one per placement, so this
        costs one entry per model, not per request or bucket)."""
        now = self._clock()
        self._prune(now)
        span = self._span(now)
        return {model: n / span for model, n in self._requests.items() if model}

    def describe(self) -> dict[str, Any]:
        """Rates over the window, totals, and per-model rates (served requests only)."""
        now = self._clock()
        for flow in self._flows.values():
            self._settle(flow, now)
        self._prune(now)
        span = self._span(now)
        per_model: dict[str, list[float]] = {}
        for bucket in self._buckets.values():
            for model, (requests, prompt, completion) in bucket.items():
                counts = per_model.setdefault(model, [0, 0, 0])
                counts[0] += requests
                counts[1] += prompt
                counts[2] += completion
        requests, inputs, outputs = (sum(c[i] for c in per_model.values()) for i in range(3))

        def per_second(n: float) -> float:
            return round(max(0.0, n) / span, 3)  # a correction may outweigh its frames

        return {
            "window_seconds": round(span, 3),
            "requests_per_second": per_second(requests),
            "input_tokens_per_second": per_second(inputs),
            "output_tokens_per_second": per_second(outputs),
            "requests_total": self.requests_total,
            "input_tokens_total": self.input_tokens_total,
            "output_tokens_total": self.output_tokens_total,
            "models": {model: {"requests_per_second": per_second(n),
                               "output_tokens_per_second": per_second(tokens)}
                       for model, (n, _, tokens) in sorted(per_model.items()) if model},
        }
