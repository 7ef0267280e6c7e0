"""The neuron's `GET /metrics`: GPUs (NVML) or RAM, and each loaded model's slots, queue,
token counters and KV cache, read when Prometheus scrapes.

Instruments are observable: the registry and engines already count what matters, so
serving a request costs nothing extra. Readings are taken once per scrape on the event
loop (GPUs in a worker thread, since NVML blocks) and the callbacks only read them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from starlette.requests import Request
from starlette.responses import Response

from cortex import GPU, EngineStats
from cortex.metrics import Prometheus
from cortex.types import ModelStatus

from .hardware import Hardware, system_memory
from .registry import ModelRegistry

__all__ = ["NeuronMetrics", "available_memory"]

_Points = list[tuple[float, dict[str, str]]]


def available_memory() -> int:
    """RAM available to new work (MemAvailable; free pages where /proc is missing)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class _Readings:
    """One scrape's worth of state, taken before the callbacks run."""

    def __init__(self) -> None:
        self.gpus: list[GPU] = []
        self.ram_total = 0
        self.ram_available = 0
        self.models: list[ModelStatus] = []
        self.stats: dict[str, EngineStats] = {}
        self.budget = 0
        self.reserved = 0


class NeuronMetrics:
    def __init__(self, registry: ModelRegistry, hardware: Hardware) -> None:
        self._registry = registry
        self._hardware = hardware
        self._now = _Readings()
        self._lock = asyncio.Lock()
        self.prometheus = Prometheus()
        meter = self.prometheus.provider.get_meter("cortex.neuron")

        def gauge(name: str, read: Callable[[_Readings], _Points], description: str,
                  unit: str = "") -> None:
            meter.create_observable_gauge(name, callbacks=[self._observe(read)], unit=unit,
                                          description=description)

        def counter(name: str, read: Callable[[_Readings], _Points], description: str,
                    unit: str = "") -> None:
            meter.create_observable_counter(name, callbacks=[self._observe(read)], unit=unit,
                                            description=description)

        gauge("cortex_neuron_gpu_memory_used", _gpu(lambda g: g.memory_used), unit="By",
              description="GPU memory in use (NVML), all processes")
        gauge("cortex_neuron_gpu_memory_total", _gpu(lambda g: g.memory_total), unit="By",
              description="GPU memory (NVML)")
        gauge("cortex_neuron_gpu_utilization_ratio", _gpu(_utilization),
              description="Fraction of the last sample period a kernel ran (NVML)")
        gauge("cortex_neuron_ram_used", lambda r: [(r.ram_total - r.ram_available, {})],
              unit="By", description="Host RAM in use (total minus available)")
        gauge("cortex_neuron_ram_total", lambda r: [(r.ram_total, {})], unit="By",
              description="Host RAM")
        gauge("cortex_neuron_memory_budget", lambda r: [(r.budget, {})], unit="By",
              description="What models may reserve on this node")
        gauge("cortex_neuron_memory_reserved", lambda r: [(r.reserved, {})], unit="By",
              description="What loaded and loading models reserve (their estimates)")
        gauge("cortex_neuron_model_slots", _model(lambda m: m.slots),
              description="Sequences the model decodes at once")
        gauge("cortex_neuron_model_busy_slots", _model(lambda m: m.in_flight),
              description="Slots generating now")
        gauge("cortex_neuron_model_queue_depth", _model(lambda m: m.queued),
              description="Requests waiting for a slot")
        counter("cortex_neuron_prefill_tokens", _stat(lambda s: s.prefill_tokens),
                unit="{token}", description="Prompt tokens decoded (KV-cache hits excluded)")
        counter("cortex_neuron_generated_tokens", _stat(lambda s: s.generated_tokens),
                unit="{token}", description="Tokens generated")
        gauge("cortex_neuron_kv_cache_used_tokens", _stat(lambda s: s.kv_cache_tokens),
              description="KV cells holding a token (kept prefixes included)")
        gauge("cortex_neuron_kv_cache_capacity_tokens", _stat(lambda s: s.kv_cache_capacity),
              description="KV cells in all (n_ctx x slots)")

    def _observe(self, read: Callable[[_Readings], _Points]
                 ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, labels) for value, labels in read(self._now)]
        return callback

    async def _read(self) -> _Readings:
        readings = _Readings()
        readings.gpus = await asyncio.to_thread(self._hardware.gpus)
        readings.ram_total = system_memory()
        readings.ram_available = available_memory()
        readings.models = self._registry.statuses()
        readings.stats = self._registry.engine_stats()
        readings.budget = self._registry.budget_bytes
        readings.reserved = self._registry.reserved_bytes
        return readings

    async def endpoint(self, request: Request) -> Response:
        async with self._lock:  # one scrape at a time: the callbacks read self._now
            self._now = await self._read()
            body, content_type = self.prometheus.scrape(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    def close(self) -> None:
        self.prometheus.close()


def _gpu(value: Callable[[GPU], float | None]) -> Callable[[_Readings], _Points]:
    def read(r: _Readings) -> _Points:
        points = []
        for g in r.gpus:
            v = value(g)
            if v is not None:
                points.append((float(v), {"gpu": str(g.index), "name": g.name}))
        return points
    return read


def _utilization(gpu: GPU) -> float | None:
    return None if gpu.utilization is None else gpu.utilization / 100


def _model(value: Callable[[ModelStatus], int]) -> Callable[[_Readings], _Points]:
    def read(r: _Readings) -> _Points:
        return [(float(value(m)), {"model": m.id}) for m in r.models if m.state == "ready"]
    return read


def _stat(value: Callable[[EngineStats], int]) -> Callable[[_Readings], _Points]:
    def read(r: _Readings) -> _Points:
        return [(float(value(s)), {"model": model}) for model, s in r.stats.items()]
    return read
