"""One thread that owns a llama.cpp model, and the bridge that streams its output to asyncio.

llama.cpp calls block and a context is not thread-safe, so every call on a model runs
on its own thread, one job at a time, and events cross back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from cortex.errors import Unavailable

__all__ = ["Job", "Worker"]

Emit = Callable[[Any], None]
JobFn = Callable[[Emit, threading.Event], None]


class Job:
    __slots__ = ("cancel", "emit", "fn")

    def __init__(self, fn: JobFn, emit: Emit) -> None:
        self.fn = fn
        self.emit = emit
        self.cancel = threading.Event()


class _End:
    """Marks the end of a job's events."""


_END = _End()


class Worker:
    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._pending: set[Job] = set()
        self._running: Job | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending) - self.in_flight

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                if job not in self._pending:  # aborted while queued
                    continue
                self._running = job
            try:
                if not job.cancel.is_set():
                    job.fn(job.emit, job.cancel)
            except BaseException as exc:
                job.emit(exc)
            finally:
                with self._lock:
                    self._running = None
                    self._pending.discard(job)
                job.emit(_END)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the model's thread, in turn with generation jobs."""
        async for result in self.stream(lambda emit, cancel: emit(fn())):
            return result
        return None

    async def stream(self, fn: JobFn) -> AsyncIterator[Any]:
        """Queue fn and yield what it emits. Closing the iterator cancels the job."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def emit(event: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(fn, emit)
        with self._lock:
            self._pending.add(job)
        self._jobs.put(job)
        try:
            while (event := await events.get()) is not _END:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            job.cancel.set()
            with self._lock:
                if self._running is not job:
                    self._pending.discard(job)

    def abort_all(self, message: str) -> None:
        """End every queued and running job with an error to its client."""
        with self._lock:
            jobs = list(self._pending)
            running = self._running
            for job in jobs:
                if job is not running:
                    self._pending.discard(job)
        for job in jobs:
            job.cancel.set()
            job.emit(Unavailable(message))
            if job is not running:
                job.emit(_END)

    def stop(self, final: Callable[[], None]) -> None:
        """Run `final` on the thread after the queued jobs, then end the thread."""
        job = Job(lambda emit, cancel: final(), lambda event: None)
        with self._lock:
            self._pending.add(job)
        self._jobs.put(job)
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
