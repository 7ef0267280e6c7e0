"""The models this neuron holds: loading, reserving memory, serving and unloading them.

The neuron is the authority on what it holds: a load that does not fit the budget is
refused here, whichever gateway asked, and concurrent loads of one model share one
load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from cortex import Engine, EngineStats, ModelProfile, Plugins
from cortex.errors import (
    Conflict,
    CortexError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    PluginError,
    Unavailable,
)
from cortex.harness import Harness, ResolvedModel
from cortex.plugins import build_options
from cortex.types import MemoryEstimate, ModelState, ModelStatus

from .sources import SourceResolver

__all__ = ["ModelRegistry", "Slot"]

log = logging.getLogger("cortex.neuron.registry")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class Slot:
    """One model's entry, from the first load request until it is unloaded."""

    def __init__(self, profile: ModelProfile) -> None:
        self.profile = profile
        self.state: ModelState = "loading"
        self.engine: Engine | None = None
        self.estimate: MemoryEstimate | None = None
        self.resolved: ResolvedModel | None = None
        self.error: str | None = None
        self.progress = 0.0
        self.started = time.monotonic()
        self.load_seconds: float | None = None
        self.last_used = time.time()
        self.active = 0
        self.pinned = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A failed load nobody waited for (wait=false) is reported through /status instead.
        self.loaded.add_done_callback(lambda f: f.cancelled() or f.exception())

    def status(self) -> ModelStatus:
        engine = self.engine
        return ModelStatus(
            id=self.profile.id, state=self.state, source=self.profile.source,
            harness=self.profile.harness, n_ctx=self.profile.n_ctx, slots=self.profile.slots,
            estimate=self.estimate,
            measured_bytes=engine.measured_bytes if engine else None,
            in_flight=engine.in_flight if engine else 0,
            queued=max(0, self.active - (engine.in_flight if engine else 0)),
            last_used=self.last_used, load_seconds=self.load_seconds,
            load_progress=self.progress, chat=engine.chat_supported if engine else True,
            embeddings=self.profile.embeddings, error=self.error, pinned=self.pinned,
            profile_fingerprint=self.profile.fingerprint())


class ModelRegistry:
    def __init__(self, *, plugins: Plugins, resolver: SourceResolver, budget_bytes: int,
                 overhead_bytes: int, harness_options: dict[str, dict[str, Any]]) -> None:
        self._plugins = plugins
        self._resolver = resolver
        self.budget_bytes = budget_bytes
        self._overhead = overhead_bytes
        self._harness_options = harness_options
        self._harnesses: dict[str, Harness] = {}
        self._slots: dict[str, Slot] = {}
        self._retiring: list[Slot] = []  # replaced by a reload, still holding memory
        self._reserve_lock = asyncio.Lock()

    # --- views ----------------------------------------------------------------------------

    @property
    def reserved_bytes(self) -> int:
        return sum(s.estimate.total for s in [*self._slots.values(), *self._retiring]
                   if s.estimate is not None)

    @property
    def kept_bytes(self) -> int:
        """Memory of unloaded models' kept weights (Harness.kept_bytes): free to a gateway."""
        return sum(h.kept_bytes() for h in self._harnesses.values())

    def _release_kept(self, needed: int, own: Harness,
                      spare: tuple[ModelProfile, ResolvedModel] | None) -> None:
        """Free `needed` bytes of kept weights, `own`'s first. Blocking."""
        needed -= own.release_kept(needed, spare)
        for harness in self._harnesses.values():
            if needed > 0 and harness is not own:
                needed -= harness.release_kept(needed)

    def statuses(self) -> list[ModelStatus]:
        return [slot.status() for slot in self._slots.values()]

    def engine_stats(self) -> dict[str, EngineStats]:
        """Counters of each loaded model whose harness keeps them."""
        out = {}
        for model_id, slot in self._slots.items():
            stats = slot.engine.stats() if slot.engine is not None else None
            if stats is not None:
                out[model_id] = stats
        return out

    def status(self, model_id: str) -> ModelStatus:
        return self._slot(model_id).status()

    def pin(self, model_id: str, pinned: bool) -> ModelStatus:
        """Mark a resident model pinned: the neuron only records it, for every gateway."""
        slot = self._slot(model_id)
        slot.pinned = pinned
        return slot.status()

    def _slot(self, model_id: str) -> Slot:
        slot = self._slots.get(model_id)
        if slot is None:
            raise ModelNotFound(model_id)
        return slot

    def _harness(self, name: str) -> Harness:
        harness = self._harnesses.get(name)
        if harness is None:
            try:
                cls = self._plugins.harness(name)
            except PluginError as exc:  # the profile names it: the client's error
                raise InvalidRequest(exc.message, param="harness") from None
            options = build_options(cls, self._harness_options.get(name, {}),
                                    where=f"neuron.toml: harness.{name}")
            harness = self._harnesses[name] = cls(options)
        return harness

    async def estimate(self, profile: ModelProfile) -> MemoryEstimate:
        """What `profile` would reserve here, so a gateway can plan placement before loading."""
        harness = self._harness(profile.harness)
        resolved = await self._resolve(harness, profile.source)
        return await asyncio.to_thread(harness.estimate, profile, resolved, self._overhead)

    async def _resolve(self, harness: Harness, source: str) -> ResolvedModel:
        if not harness.needs_files:
            return harness.resolve(source)
        return await asyncio.to_thread(self._resolver.resolve, source)

    # --- load -----------------------------------------------------------------------------

    async def load(self, profile: ModelProfile, *, wait: bool = True) -> ModelStatus:
        """Load a model, or join the load already under way. Idempotent for one profile;
        a ready model asked for with a changed profile takes it (_change)."""
        profile = profile.for_neuron()
        slot = self._slots.get(profile.id)
        if slot is not None and slot.state == "ready" and slot.profile != profile:
            slot = await self._change(slot, profile)
        elif slot is not None and slot.state in ("loading", "ready"):
            if slot.profile != profile:
                raise Conflict(f"model `{profile.id}` is loading with a different profile; "
                               "load it again once it is ready", retry_after=1)
        elif slot is not None and slot.state == "unloading":
            raise Conflict(f"model `{profile.id}` is unloading; load it again when it is gone")
        else:
            slot = self._slots[profile.id] = Slot(profile)
            task = asyncio.create_task(self._load(slot), name=f"load:{profile.id}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if wait:
            await asyncio.shield(slot.loaded)
        return slot.status()

    async def _change(self, slot: Slot, profile: ModelProfile) -> Slot:
        """A changed profile for a ready model (docs/gateway.md: changed profiles apply to
        the next request). The engine takes it in place where it can (a chat template:
        no weights reloaded); else the model loads again under it once the requests in
        flight are done, and requests arriving meanwhile wait for that load."""
        engine = slot.engine
        assert engine is not None
        if slot.profile.harness == profile.harness and \
                await asyncio.to_thread(engine.reconfigure, profile):
            log.info("%s: changed profile taken in place", profile.id)
            slot.profile = profile
            return slot
        fresh = self._slots[profile.id] = Slot(profile)
        fresh.pinned, slot.state = slot.pinned, "unloading"
        self._retiring.append(slot)
        task = asyncio.create_task(self._reload(slot, fresh), name=f"reload:{profile.id}")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return fresh

    async def _reload(self, old: Slot, fresh: Slot) -> None:
        try:
            await old.idle.wait()
            assert old.engine is not None
            await old.engine.close()
        except Exception:
            log.exception("unloading %s for its changed profile failed", fresh.profile.id)
        finally:
            old.engine = None
            self._retiring.remove(old)
        log.info("%s: loading again under its changed profile", fresh.profile.id)
        await self._load(fresh)

    async def _load(self, slot: Slot) -> None:
        profile = slot.profile
        try:
            harness = self._harness(profile.harness)
            slot.resolved = await self._resolve(harness, profile.source)
            estimate = await asyncio.to_thread(harness.estimate, profile, slot.resolved,
                                               self._overhead)
            async with self._reserve_lock:
                free = self.budget_bytes - self.reserved_bytes
                if estimate.total > free:
                    raise InsufficientMemory(
                        f"model `{profile.id}` needs {_gib(estimate.total)} (weights "
                        f"{_gib(estimate.weights)} + KV cache {_gib(estimate.kv_cache)} + "
                        f"compute {_gib(estimate.compute)} + overhead "
                        f"{_gib(estimate.overhead)}) but this node has {_gib(free)} "
                        f"free of its {_gib(self.budget_bytes)} budget")
                slot.estimate = estimate
                # Weights kept from earlier loads count as free; take back what this needs.
                short = estimate.total - (free - self.kept_bytes)
                if short > 0:
                    await asyncio.to_thread(self._release_kept, short, harness,
                                            (profile, slot.resolved))

            def progress(fraction: float) -> None:
                slot.progress = fraction

            slot.engine = await asyncio.to_thread(harness.load, profile, slot.resolved, progress)
        except BaseException as exc:
            self._slots.pop(profile.id, None)
            slot.state = "failed"
            slot.error = str(exc)
            if not slot.loaded.done():
                slot.loaded.set_exception(
                    exc if isinstance(exc, CortexError | asyncio.CancelledError)
                    else Unavailable(f"loading `{profile.id}` failed: {exc}"))
            if not isinstance(exc, CortexError):
                log.exception("loading %s failed", profile.id)
            else:  # a [[preload]] has nobody waiting to be told
                log.warning("loading %s failed: %s", profile.id, exc.message)
            return
        slot.state = "ready"
        slot.progress = 1.0
        slot.load_seconds = time.monotonic() - slot.started
        slot.last_used = time.time()
        slot.loaded.set_result(None)
        log.info("loaded %s in %.2fs (estimate %s)", profile.id, slot.load_seconds,
                 _gib(slot.estimate.total if slot.estimate else 0))

    # --- use ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, model_id: str) -> AsyncIterator[Engine]:
        """Hold a model for one request; waits for a load in progress."""
        slot = self._slot(model_id)
        if slot.state == "loading":
            await asyncio.shield(slot.loaded)
        if slot.state != "ready" or slot.engine is None:
            raise Unavailable(f"model `{model_id}` is {slot.state}", retry_after=1)
        slot.active += 1
        slot.idle.clear()
        try:
            yield slot.engine
        finally:
            slot.active -= 1
            slot.last_used = time.time()
            if slot.active == 0:
                slot.idle.set()

    # --- unload ---------------------------------------------------------------------------

    async def unload(self, model_id: str, *, force: bool = False) -> ModelStatus:
        """Unload once in-flight work is done; with force, end that work with an error first."""
        slot = self._slot(model_id)
        if slot.state == "loading":
            raise Conflict(f"model `{model_id}` is still loading")
        if slot.state == "unloading":
            if force and slot.engine is not None:
                slot.engine.abort(f"model `{model_id}` was unloaded")
            await slot.idle.wait()
            return slot.status()
        slot.state = "unloading"
        engine = slot.engine
        assert engine is not None
        if force:
            engine.abort(f"model `{model_id}` was unloaded")
        await slot.idle.wait()
        await engine.close()
        self._slots.pop(model_id, None)
        status = slot.status()
        slot.engine = None
        log.info("unloaded %s", model_id)
        return status

    async def close(self) -> None:
        for model_id in list(self._slots):
            with contextlib.suppress(CortexError):
                await self.unload(model_id, force=True)
        for harness in self._harnesses.values():
            await asyncio.to_thread(harness.release_kept, harness.kept_bytes())
