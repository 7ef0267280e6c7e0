"""Loader: cold loads, single-flight per model, cancelled when nobody waits any more.

Starting a job is synchronous (it marks the load and its victims in the fleet view
before the first await), so the next routing decision already sees it and joins it
instead of starting a second load. While a load runs, the neuron's status is read every
PROGRESS_POLL seconds for llama.cpp's progress, which each job carries for the streams
waiting on it and tells as `load_progress` events (GET /admin/events).
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
#: Seconds between reads of a loading model's progress on its neuron.
PROGRESS_POLL = 0.25


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.2f} GiB"


class LoadJob:
    """One load of one model on one node, shared by every request that waits for it."""

    def __init__(self, profile: ModelProfile, node: str, *, keep: bool,
                 needs: int | None = None, victims: Sequence[str] = ()) -> None:
        self.profile = profile
        self.node = node
        self.needs = needs
        self.victims = tuple(victims)
        # The neuron's fraction loaded (0 to 1); `moved` is set when it changes.
        self.progress = 0.0
        self.moved = asyncio.Event()
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

    def advance(self, progress: float) -> None:
        """Take the neuron's progress; wakes whoever waits on `moved`."""
        self.progress = progress
        moved, self.moved = self.moved, asyncio.Event()
        moved.set()


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
        job = LoadJob(profile, node, keep=keep, needs=needs, victims=victims)
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
            expected = self._fleet.estimates.load_seconds(job.model) or 5.0
            rest = max(1.0, expected - (time.monotonic() - job.started))
            raise Timeout(f"model `{job.model}` was not ready on `{job.node}` within the "
                          "load deadline", retry_after=rest) from None
        finally:
            job.waiters -= 1
            if job.waiters == 0 and not job.keep and not job.future.done() \
                    and job.task is not None:
                log.info("nobody waits for %s any more: cancelling its load", job.model)
                job.task.cancel()

    async def _run(self, job: LoadJob, victims: Sequence[str], *, fresh: bool,
                   policy: str = "evicted") -> None:
        fleet, node, model = self._fleet, job.node, job.model
        if fresh:
            log.info("loading %s on %s (estimate %s%s)", model, node, _gib(job.needs),
                     f"; evicting {', '.join(victims)} ({policy})" if victims else "")
            fleet.emit("load_started", node, model=model, bytes=job.needs,
                       victims=tuple(victims), reason=policy if victims else None)
        else:
            log.info("waiting for the load of %s on %s, started elsewhere", model, node)
        follower = asyncio.create_task(self._follow(job), name=f"progress:{model}@{node}")
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
            job.advance(1.0)
            if fresh:
                fleet.emit("loaded", node, model=model, seconds=status.load_seconds)
                log.info("loaded %s on %s in %.2fs", model, node, status.load_seconds or 0.0)
            job.future.set_result(status)
        finally:
            follower.cancel()
            fleet.end_load(node, model)
            if self._jobs.get(model) is job:
                del self._jobs[model]

    async def _follow(self, job: LoadJob) -> None:
        """Read the load's progress off the neuron until cancelled (the load ended)."""
        client = self._fleet.client(job.node)
        while True:
            await asyncio.sleep(PROGRESS_POLL)
            try:
                status = await client.status(timeout=max(1.0, PROGRESS_POLL * 4))
            except CortexError:
                continue  # the load itself will say what is wrong
            current = next((m for m in status.models if m.id == job.model), None)
            if current is not None and current.state == "loading" \
                    and current.load_progress > job.progress:
                job.advance(current.load_progress)
                self._fleet.emit("load_progress", job.node, model=job.model,
                                 progress=round(current.load_progress, 3))

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
