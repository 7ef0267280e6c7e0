"""Loader: cold loads, single-flight per model, cancelled when nobody waits any more.

Starting a job is synchronous (it marks the load and its victims in the fleet view
before the first await), so the next routing decision already sees it and joins it
instead of starting a second load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from cortex.config import ModelProfile
from cortex.errors import CortexError, Timeout, Unreachable
from cortex.gateway.fleet import Fleet
from cortex.types import ModelStatus

__all__ = ["LoadJob", "Loader"]

log = logging.getLogger("cortex.gateway.loader")
_ABANDON_POLL = 0.25
_ABANDON_LIMIT = 3600.0


class LoadJob:
    """One load of one model on one node, shared by every request that waits for it."""

    def __init__(self, profile: ModelProfile, node: str, *, keep: bool) -> None:
        self.profile = profile
        self.node = node
        # keep: finish even with no waiters (pinned models, admin loads, defrag reloads).
        self.keep = keep
        self.waiters = 0
        self.started = time.monotonic()
        self.future: asyncio.Future[ModelStatus] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.task: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return self.profile.id


class Loader:
    def __init__(self, fleet: Fleet, *, load_timeout: float) -> None:
        self._fleet = fleet
        self.load_timeout = load_timeout
        self._jobs: dict[str, LoadJob] = {}
        self._cleanups: set[asyncio.Task[None]] = set()

    def job(self, model: str) -> LoadJob | None:
        return self._jobs.get(model)

    @property
    def jobs(self) -> list[LoadJob]:
        return list(self._jobs.values())

    def start(self, profile: ModelProfile, node: str, *, needs: int,
              victims: Sequence[str] = (), keep: bool = False,
              policy: str = "evicted") -> LoadJob:
        """Evict `victims` from `node` (`policy` chose them), then load `profile` there."""
        job = LoadJob(profile, node, keep=keep)
        self._fleet.begin_load(node, profile.id, needs)
        self._jobs[profile.id] = job
        job.task = asyncio.create_task(self._run(job, victims, fresh=True, policy=policy),
                                       name=f"load:{profile.id}@{node}")
        return job

    def join(self, profile: ModelProfile, node: str, *, keep: bool = False) -> LoadJob:
        """Wait for a load someone else (another replica, a preload) started on `node`."""
        job = LoadJob(profile, node, keep=keep)
        self._jobs[profile.id] = job
        job.task = asyncio.create_task(self._run(job, (), fresh=False),
                                       name=f"join:{profile.id}@{node}")
        return job

    async def wait(self, job: LoadJob, timeout: float) -> ModelStatus:
        """Wait for a job as one of its waiters; the last waiter to leave cancels it."""
        job.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(0.0, timeout))
        except TimeoutError:
            raise Timeout(f"model `{job.model}` was not ready on `{job.node}` within the "
                          "load deadline", retry_after=5) from None
        finally:
            job.waiters -= 1
            if job.waiters == 0 and not job.keep and not job.future.done() \
                    and job.task is not None:
                log.info("nobody waits for %s any more: cancelling its load", job.model)
                job.task.cancel()

    async def _run(self, job: LoadJob, victims: Sequence[str], *, fresh: bool,
                   policy: str = "evicted") -> None:
        fleet, node, model = self._fleet, job.node, job.model
        try:
            if victims:
                await asyncio.gather(*(fleet.unload(node, victim, reason=policy, evicted=True)
                                       for victim in victims))
            status = await fleet.client(node).load(job.profile, wait=True)
        except asyncio.CancelledError:
            job.future.cancel()
            if fresh:
                self._cleanup(job)
            raise
        except CortexError as exc:
            if isinstance(exc, Unreachable):
                fleet.report_failure(node, exc)
            fleet.emit("load_failed", node, model=model, reason=exc.message)
            log.warning("loading %s on %s failed: %s", model, node, exc.message)
            job.future.set_exception(exc)
        else:
            fleet.apply_model(node, status)
            if fresh:
                fleet.emit("loaded", node, model=model, seconds=status.load_seconds)
                log.info("loaded %s on %s in %.2fs", model, node, status.load_seconds or 0.0)
            job.future.set_result(status)
        finally:
            fleet.end_load(node, model)
            if self._jobs.get(model) is job:
                del self._jobs[model]

    def _cleanup(self, job: LoadJob) -> None:
        task = asyncio.create_task(self._abandon(job), name=f"abandon:{job.model}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _abandon(self, job: LoadJob) -> None:
        """The neuron finishes a load it started even when we stop waiting: unload it
        once it is ready, unless a new request wants it by then."""
        fleet, node, model = self._fleet, job.node, job.model
        # As long as the neuron takes: the load deadline was for the waiters, not for it.
        deadline = time.monotonic() + max(self.load_timeout, _ABANDON_LIMIT)
        current: ModelStatus | None = None
        try:
            while time.monotonic() < deadline:
                status = await fleet.client(node).status()
                current = next((m for m in status.models if m.id == model), None)
                if current is None or current.state not in ("loading", "ready"):
                    return
                if current.state == "ready":
                    fleet.apply_model(node, current)
                    break
                await asyncio.sleep(_ABANDON_POLL)
            if self.job(model) is not None or current is None or current.state != "ready":
                return
            if current.in_flight or current.queued:
                return
            await fleet.unload(node, model, reason="abandoned")
        except CortexError as exc:
            log.info("could not clean up the abandoned load of %s on %s: %s", model, node,
                     exc.message)

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            if job.task is not None:
                job.task.cancel()
        for task in list(self._cleanups):
            task.cancel()
        for job in list(self._jobs.values()):
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
