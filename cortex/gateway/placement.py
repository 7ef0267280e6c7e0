"""Placer: where a request goes, and how long it may wait for it.

It resolves the profile a name means, refuses a request when too many wait for its
model (`queue_limit`), asks the router (a pure function of a fleet snapshot) where the
request goes, and carries the decision out: serve on a ready node at once, or join or
start a load (cortex.gateway.loader) and wait for it, trying again while a neuron's
refusal or a failed load leaves another way before the deadline. A request that
queues behind `spill_after` others starts another copy in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import msgspec

from cortex.config import ModelProfile
from cortex.errors import (
    Conflict,
    CortexError,
    InsufficientMemory,
    ModelNotFound,
    RateLimited,
    Timeout,
    Unavailable,
    Unreachable,
    Unservable,
)
from cortex.gateway.catalogue import unconfigured_profile
from cortex.gateway.fairshare import FairShare
from cortex.gateway.fleet import Fleet
from cortex.gateway.loader import Loader, LoadJob
from cortex.gateway.state import LiveConfig
from cortex.router import Decision, RouteRequest
from cortex.snapshot import FleetSnapshot

__all__ = ["Placer"]

log = logging.getLogger("cortex.gateway")


def _explained(decision: Decision) -> str:
    """A decision's reason with each node's verdict: what a refused client is told."""
    detail = "; ".join(f"{v.node}: {v.verdict}" for v in decision.candidates)
    return decision.reason + (f" ({detail})" if detail else "")


def _usable(job: LoadJob | None, exclude: frozenset[str], only: str | None) -> LoadJob | None:
    if job is None or job.node in exclude or (only is not None and job.node != only):
        return None
    return job


class Placer:
    def __init__(self, live: LiveConfig, fleet: Fleet, loader: Loader, fair: FairShare, *,
                 rates: Callable[[], Mapping[str, float]] = dict) -> None:
        """`rates`: the models' recent requests per second (cortex.gateway.traffic), which
        the snapshot hands to eviction policies that weigh demand."""
        self._live = live
        self._fleet = fleet
        self._rates = rates
        self._estimates = fleet.estimates
        self._loader = loader
        self._fair = fair
        self._waiting: Counter[str] = Counter()
        self._spills: dict[str, asyncio.Task[None]] = {}
        self._asking: dict[str, asyncio.Task[dict[str, int]]] = {}

    def close(self) -> None:
        """Stop starting the copies `spill_after` asked for, and asking for estimates."""
        for task in [*self._spills.values(), *self._asking.values()]:
            task.cancel()

    def _asked_of(self, model: str) -> Callable[[object], None]:
        def forget(_: object) -> None:
            self._asking.pop(model, None)
        return forget

    def unservable(self) -> dict[str, str]:
        """The profiles no node can ever hold, each with why (the catalogue's state
        `unservable`), from what the neurons said of them already; a profile whose
        nodes were not asked yet is asked in the background, for the next look."""
        snapshot, found = self.snapshot(), {}
        for profile in self._live.profiles:
            request = self._route_request(profile, conversation=None, exclude=frozenset(),
                                          only=None)
            names = [n.name for n in snapshot.nodes if request.allows(n)]
            sizes, refusals = self._estimates.known(profile, names)
            if len(sizes) + len(refusals) < len(names) and profile.id not in self._asking:
                task = asyncio.ensure_future(self._estimates.of(profile, names))
                self._asking[profile.id] = task
                task.add_done_callback(self._asked_of(profile.id))
            decision = self._live.router.decide(
                msgspec.structs.replace(request, estimates=sizes, refusals=refusals), snapshot)
            if decision.unservable:
                found[profile.id] = _explained(decision)
        return found

    def snapshot(self) -> FleetSnapshot:
        """The fleet as the router sees it, under the live profiles."""
        return self._fleet.snapshot(self._live.profiles, self._rates())

    def resolve(self, name: str) -> tuple[ModelProfile, bool]:
        """The profile `name` means, and whether the gateway may load it (it may not load a
        model a neuron holds that no profile describes)."""
        try:
            return self._live.profiles.resolve(name), True
        except ModelNotFound:
            profile = unconfigured_profile(name, self.snapshot())
            if profile is None:
                raise
            return profile, False

    # --- admission --------------------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, model: str) -> Iterator[None]:
        """Count a request waiting to be placed, toward `queue_limit`."""
        self._waiting[model] += 1
        try:
            yield
        finally:
            self._waiting[model] -= 1

    def admit(self, profile: ModelProfile) -> None:
        """Refuse a request (429) when too many already wait for this model."""
        queued = self._waiting[profile.id] + self._fleet.backlog(profile.id) \
            + self._fair.waiting(profile.id)
        limit = self._live.settings.queue_limit
        if queued >= limit:
            job = self._loader.job(profile.id)
            wait = 1.0
            if job is not None:
                expected = self._estimates.load_seconds(profile.id) or 5.0
                wait = max(1.0, expected - (time.monotonic() - job.started))
            raise RateLimited(f"model `{profile.id}` has {queued} requests waiting "
                              f"(queue_limit is {limit})", retry_after=wait)

    # --- placement --------------------------------------------------------------------------

    def _route_request(self, profile: ModelProfile, *, conversation: str | None,
                       exclude: frozenset[str], only: str | None) -> RouteRequest:
        affinity = (only,) if only else tuple(profile.neurons)
        return RouteRequest(model=profile.id, affinity=affinity, conversation=conversation,
                            exclude=exclude, load_seconds=self._estimates.load_seconds(profile.id),
                            max_copies=profile.max_copies)

    async def decide(self, profile: ModelProfile, *, loadable: bool = True,
                     conversation: str | None = None, exclude: frozenset[str] = frozenset(),
                     only: str | None = None) -> Decision:
        """The router's decision; asks the neurons for memory estimates only when the model
        must be placed somewhere new."""
        request = self._route_request(profile, conversation=conversation, exclude=exclude,
                                      only=only)
        decision = self._live.router.decide(request, self.snapshot())
        if decision.action in ("serve", "join") or not loadable:
            return decision
        names = [n.name for n in self.snapshot().nodes if request.allows(n)]
        estimates = await self._estimates.of(profile, names)
        refusals = self._estimates.refusals(profile, names)
        return self._live.router.decide(
            msgspec.structs.replace(request, estimates=estimates, refusals=refusals),
            self.snapshot())

    def retry_after(self, profile: ModelProfile, decision: Decision | None = None) -> float:
        """Seconds a client refused for now should wait: a load's expected time (the
        decision's, else the model's last, else a guess from its smallest known
        estimate), once per `slots` requests already waiting for the model, within
        [1, load_timeout]."""
        if decision is not None and decision.expected_wait:
            expected = decision.expected_wait
        else:
            request = self._route_request(profile, conversation=None, exclude=frozenset(),
                                          only=None)
            sizes = self._estimates.known(profile, [n.name for n in self.snapshot().nodes])[0]
            needs = decision.needs if decision is not None and decision.needs else \
                min(sizes.values(), default=None)
            expected = self._live.router.expected_load_seconds(request, needs)
        queued = self._waiting[profile.id] + self._fleet.backlog(profile.id) \
            + self._fair.waiting(profile.id)
        rounds = 1 + queued // max(1, profile.slots)
        return min(max(1.0, expected * rounds), max(1.0, self._live.settings.load_timeout))

    async def place(self, profile: ModelProfile, *, loadable: bool = True,
                    conversation: str | None = None, exclude: frozenset[str] = frozenset(),
                    deadline: float, keep: bool = False, only: str | None = None,
                    on_load: Callable[[LoadJob], None] | None = None) -> str:
        """A node where the model is ready, loading it first (one load per model) if needed;
        `on_load` is told of each load the caller waits for (a stream shows its progress)."""
        refusals = 0
        failed: CortexError | None = None  # the last load that failed on a node now excluded
        while True:
            if time.monotonic() >= deadline:
                raise Timeout(f"model `{profile.id}` could not be placed before the deadline",
                              retry_after=self.retry_after(profile))
            request = self._route_request(profile, conversation=conversation, exclude=exclude,
                                          only=only)
            quick = self._live.router.decide(request, self.snapshot())
            if quick.action == "serve" and quick.node is not None:
                self.spill_if_queued(profile, quick.ahead)
                return quick.node
            job = _usable(self._loader.job(profile.id), exclude, only)
            if job is None:
                decision = await self.decide(profile, loadable=loadable,
                                             conversation=conversation, exclude=exclude,
                                             only=only)
                job = _usable(self._loader.job(profile.id), exclude, only)
                waitable = job is None and decision.action == "none" \
                    and not decision.unservable
                unloading = self._unloading(profile.id) if waitable else []
                if waitable and (refusals or unloading):
                    # A neuron refused our load because another gateway took the room (its
                    # model becomes evictable once ready and idle), or the model is on its
                    # way out of a node (keep_alive 0, an unload, a TTL): both pass, so
                    # wait (up to the deadline) rather than fail a request that fits.
                    for node in unloading:
                        self._fleet.poke(node)
                    await asyncio.sleep(min(self._live.settings.poll_interval,
                                            max(0.0, deadline - time.monotonic())))
                    continue
                if job is None and decision.action == "none" and failed is not None:
                    raise failed  # what went wrong, not "no node can serve it"
                if job is None:
                    job = self._act(profile, decision, loadable=loadable, keep=keep)
                    if job is None:
                        assert decision.node is not None
                        return decision.node
            if keep:
                job.keep = True
            if on_load is not None:
                on_load(job)
            try:
                await self._loader.wait(job, deadline - time.monotonic())
                return job.node
            except InsufficientMemory:
                # Another gateway (or a stale view) took the room: look again, a few times.
                refusals += 1
                if refusals > 2:
                    raise
                await self._fleet.refresh(job.node)
            except Conflict:
                await self._fleet.refresh(job.node)
                await asyncio.sleep(0.2)
            except (Unreachable, Unavailable) as exc:
                # Unavailable: the neuron would not load it (draining, or the load
                # failed there); another node may.
                failed = exc
                exclude = exclude | {job.node}
                self._fleet.poke(job.node)

    def _unloading(self, model: str) -> list[str]:
        """The nodes where `model` is being unloaded now."""
        return [node.name for node, m in self.snapshot().placements_of(model)
                if m.state == "unloading"]

    def _act(self, profile: ModelProfile, decision: Decision, *, loadable: bool,
             keep: bool) -> LoadJob | None:
        if decision.action == "serve":
            return None
        if decision.action == "none" or decision.node is None:
            message = _explained(decision)
            if decision.unservable:
                log.info("%s is unservable: %s", profile.id, message)
                raise Unservable(message)
            raise Unavailable(message, retry_after=self.retry_after(profile, decision))
        if not loadable:
            raise Unavailable(f"model `{profile.id}` is {decision.action}ing on "
                              f"`{decision.node}`; retry shortly",
                              retry_after=self.retry_after(profile, decision))
        keep = keep or profile.pinned  # a pinned model's load is never abandoned
        if decision.action == "join":
            return self._loader.join(profile, decision.node, keep=keep)
        assert decision.needs is not None
        return self._loader.start(profile, decision.node, needs=decision.needs,
                                  victims=decision.victims, keep=keep,
                                  policy=self._live.router.evictor.policy.name)

    # --- another copy under load --------------------------------------------------------------

    def spill_if_queued(self, profile: ModelProfile, ahead: int) -> None:
        """When a request queues behind `spill_after` others (`ahead`: on a neuron, or
        waiting for its turn here), load another copy in the background; requests keep
        going to the ready copies meanwhile, never wait for it."""
        if profile.spill_after is None or ahead < profile.spill_after \
                or profile.id in self._spills or self._loader.job(profile.id) is not None:
            return
        task = asyncio.create_task(self._spill(profile), name=f"spill:{profile.id}")
        self._spills[profile.id] = task
        task.add_done_callback(lambda _: self._spills.pop(profile.id, None))

    async def spill_decision(self, profile: ModelProfile) -> Decision | None:
        """Where another copy of `profile` would load now (Router.spill), if anywhere."""
        request = self._route_request(profile, conversation=None, exclude=frozenset(),
                                      only=None)
        names = [n.name for n in self.snapshot().nodes if request.allows(n)]
        try:
            estimates = await self._estimates.of(profile, names)
        except CortexError as exc:
            log.info("%s: no estimates for another copy: %s", profile.id, exc.message)
            return None
        return self._live.router.spill(msgspec.structs.replace(request, estimates=estimates),
                                       self.snapshot())

    async def _spill(self, profile: ModelProfile) -> None:
        decision = await self.spill_decision(profile)
        if decision is None or decision.node is None or decision.needs is None \
                or self._loader.job(profile.id) is not None:
            return
        log.info("%s: %s; loading one on %s", profile.id, decision.reason, decision.node)
        self._loader.start(profile, decision.node, needs=decision.needs, keep=True)
