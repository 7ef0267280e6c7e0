"""`cortex config check --live`: ask each neuron to estimate each profile it may serve.

The gateway cannot see the neurons' disks, so a model file that does not exist, a hub
source that is not there or a harness a neuron lacks shows only when a neuron is asked.
Estimating reads the model's metadata without loading it, so this is safe to run
against a fleet in service.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from cortex.config import GatewayConfig, ModelProfile
from cortex.jsonhttp import HttpFailure, call_json

__all__ = ["estimate_all"]

ESTIMATE_TIMEOUT = 120.0


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def estimate_all(config: GatewayConfig, profiles: Sequence[ModelProfile], *, models: str,
                 timeout: float = ESTIMATE_TIMEOUT) -> tuple[list[str], list[str]]:
    """(a line per estimate, a line per problem): each profile on each neuron it names
    (every neuron when it names none). A neuron that cannot be reached is one problem."""
    found: list[str] = []
    problems: list[str] = []
    unreachable: set[str] = set()
    for profile in profiles:
        where = f"{models}: models[{profile.id}]"
        for entry in config.neurons:
            if (profile.neurons and entry.name not in profile.neurons) \
                    or entry.name in unreachable:
                continue
            try:
                answer = call_json(entry.endpoint, "/models/estimate",
                                   body={"profile": msgspec.to_builtins(profile)},
                                   timeout=timeout, bearer=entry.secret)
            except HttpFailure as exc:
                if exc.unreachable or exc.timed_out:
                    unreachable.add(entry.name)
                    problems.append(f"neurons[{entry.name}]: cannot ask {entry.endpoint}: "
                                    f"{exc.message}")
                elif exc.status == 401:
                    unreachable.add(entry.name)
                    problems.append(f"neurons[{entry.name}].secret: {entry.endpoint} refused "
                                    "the secret: it must be the neuron's own `secret`")
                else:
                    problems.append(f"{where} on neuron `{entry.name}`: {exc.message}")
                continue
            found.append(f"{where} on {entry.name}: {_gib(int(answer['total']))} "
                         f"(weights {_gib(int(answer['weights']))}, "
                         f"KV cache {_gib(int(answer['kv_cache']))})")
    return found, problems
