"""Prometheus exposition for OpenTelemetry instruments, one registry per app.

Every app builds its own MeterProvider and Prometheus registry, never the global ones,
so two apps in one process (or one per test) never share a count. The neuron and the
gateway (cortex.gateway.metrics) both build their instruments on `Prometheus`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Prometheus", "histogram_view", "metrics_app", "metrics_endpoint"]


class Prometheus:
    """A MeterProvider whose only reader is a Prometheus exporter on a private registry."""

    def __init__(self, *, views: Sequence[View] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        # No target_info or scope labels: the scrape job names the process, and every
        # series carries only the labels documented in docs/observability.md.
        self._reader = PrometheusMetricReader(disable_target_info=True,
                                              scope_info_enabled=False,
                                              registry=self.registry)
        self.provider = MeterProvider(metric_readers=[self._reader], views=list(views))

    def scrape(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when `accept` asks for it) and its content type.
        Runs the observable instruments' callbacks."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def close(self) -> None:
        self.provider.shutdown()


def histogram_view(name: str, buckets: Sequence[float]) -> View:
    return View(instrument_name=name,
                aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets))


def metrics_endpoint(prometheus: Prometheus) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving `prometheus` (on the event loop's thread, so the
    callbacks read the app's state between, never during, its updates)."""

    async def metrics(request: Request) -> Response:
        body, content_type = prometheus.scrape(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    return metrics


def metrics_app(prometheus: Prometheus) -> Starlette:
    """A tiny app answering `GET /metrics`, for its own port (`metrics_listen`)."""
    return Starlette(routes=[Route("/metrics", metrics_endpoint(prometheus))])
