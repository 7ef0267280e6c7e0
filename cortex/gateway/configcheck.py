"""The one check of a gateway configuration: `cortex config check`, `cortex serve` and
every reload (SIGHUP, `cortex reload`) run this same code, so a file the check passes
starts, and one it refuses is refused at start and reload with the same lines.

`check_file` reads cortex.toml and its models and runs `check`: listen addresses,
neuron endpoints and names, the profiles (their harness's own checks, source shapes,
neurons that exist), then `prepare`, which builds what the gateway runs on (the
routing and eviction plugins with their Options, each dialect's Options, the keys).
`LiveConfig` builds itself through `prepare` too. Every problem is found, not just
the first, and each is one line naming the file, the dotted key (an entry of an array
by its id or name) and the reason.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from cortex.config import (
    GatewayConfig,
    ModelProfile,
    did_you_mean,
    load_gateway_config,
)
from cortex.dialect import Dialect
from cortex.errors import ConfigError, CortexError, PluginError
from cortex.evictor import Evictor
from cortex.gateway.auth import KeyRing
from cortex.plugins import Plugins, build_options
from cortex.router import Router
from cortex.sockets import check_listen
from cortex.sources import source_problem

__all__ = ["NAMES", "Checked", "ConfigProblems", "Files", "Prepared", "check", "check_file",
           "prepare", "problems_of"]


class ConfigProblems(ConfigError):
    """Every problem found in a configuration, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def problems_of(exc: CortexError) -> list[str]:
    """The lines to log or print for a refused configuration."""
    return exc.problems if isinstance(exc, ConfigProblems) else [exc.message]


class Files(NamedTuple):
    """What to call the configuration in messages: the real file names (or what set a
    value that came from elsewhere, such as `--listen`)."""

    config: str = "cortex.toml"
    models: str = "cortex.toml"
    listen: str | None = None  # e.g. "--listen", when a flag replaced [gateway] listen
    metrics_listen: str | None = None


#: The names used when the caller has no file to name.
NAMES = Files()


class Prepared(NamedTuple):
    """What the gateway runs a configuration with."""

    keys: KeyRing
    router: Router
    dialect_options: dict[str, Dialect.Options]


class Checked(NamedTuple):
    """A configuration that passed, what it runs with, and what it may have meant."""

    config: GatewayConfig
    profiles: list[ModelProfile]
    prepared: Prepared
    warnings: list[str]
    files: Files = NAMES


def _plugin(problems: list[str], where: str, pick: Any, name: str, kind: str,
            known: Sequence[str]) -> Any:
    try:
        return pick(name)
    except PluginError:
        problems.append(f"{where}: unknown {kind} `{name}`{did_you_mean(name, known)} "
                        f"(available: {', '.join(sorted(known)) or 'none'})")
        return None


def _options(problems: list[str], cls: Any, raw: dict[str, Any], where: str) -> Any:
    try:
        return build_options(cls, raw, where=where)
    except ConfigError as exc:
        problems.append(exc.message)
        return None


def prepare(config: GatewayConfig, plugins: Plugins, *, files: Files = NAMES) -> Prepared:
    """The router (routing strategy and eviction policy with their Options), each
    dialect's Options and the keys of `config`; ConfigProblems lists what is wrong."""
    problems: list[str] = []
    source = files.config
    strategy_cls = _plugin(problems, f"{source}: routing.strategy", plugins.routing_strategy,
                           config.routing.strategy, "routing strategy",
                           list(plugins.routing_strategies))
    policy_cls = _plugin(problems, f"{source}: eviction.strategy", plugins.eviction_policy,
                         config.eviction.strategy, "eviction policy",
                         list(plugins.eviction_policies))
    strategy = policy = None
    if strategy_cls is not None:
        strategy = _options(problems, strategy_cls, config.routing.options,
                            f"{source}: routing.options")
    if policy_cls is not None:
        policy = _options(problems, policy_cls, config.eviction.options,
                          f"{source}: eviction.options")
    dialect_options: dict[str, Dialect.Options] = {}
    for name in config.dialects:
        if name not in plugins.dialects:
            problems.append(f"{source}: dialects.{name}: no dialect is named `{name}`"
                            f"{did_you_mean(name, plugins.dialects)} (available: "
                            f"{', '.join(sorted(plugins.dialects)) or 'none'})")
    for name, cls in plugins.dialects.items():
        options = _options(problems, cls, dict(config.dialects.get(name, {})),
                           f"{source}: dialects.{name}")
        if options is not None:
            dialect_options[name] = options
    keys = None
    try:
        keys = KeyRing(config.auth)
    except ConfigError as exc:
        problems.append(f"{source}: {exc.message}")
    if problems or keys is None or strategy_cls is None or policy_cls is None:
        raise ConfigProblems(problems)
    router = Router(strategy_cls(strategy), Evictor(
        policy_cls(policy), defrag_after_cycles=config.eviction.defrag_after_cycles))
    return Prepared(keys, router, dialect_options)


def _endpoint_problem(endpoint: str) -> str | None:
    try:
        url = urllib.parse.urlsplit(endpoint)
        url.port  # noqa: B018 (raises ValueError on a port that is no number)
    except ValueError as exc:
        return f"`{endpoint}` is not a URL ({exc})"
    if url.scheme not in ("http", "https"):
        shown = endpoint.split("://", 1)[-1]
        return (f"`{endpoint}` needs the scheme: http://{shown} (a neuron serves plain "
                "HTTP unless a proxy in front of it ends TLS)")
    if not url.hostname:
        return f"`{endpoint}` names no host"
    if url.query or url.fragment:
        return f"`{endpoint}` has a query or fragment: give scheme, host and port only"
    return None


def check(config: GatewayConfig, profiles: Sequence[ModelProfile], plugins: Plugins, *,
          files: Files = NAMES) -> Checked:
    """Everything `cortex serve` would refuse in this configuration, found at once."""
    problems: list[str] = []
    warnings: list[str] = []
    source, models = files.config, files.models
    for key, given in (("listen", files.listen), ("metrics_listen", files.metrics_listen)):
        try:
            check_listen(getattr(config.gateway, key))
        except ValueError as exc:
            problems.append(f"{given or f'{source}: gateway.{key}'}: {exc}")
    discovery = bool(getattr(config, "discovery", None))  # [[discovery]] may add neurons
    if not config.neurons and not discovery:
        problems.append(f"{source}: no [[neurons]] (and no [[discovery]]): the gateway would "
                        "have no neuron to serve from")
    for entry in config.neurons:
        wrong = _endpoint_problem(entry.endpoint)
        if wrong:
            problems.append(f"{source}: neurons[{entry.name}].endpoint: {wrong}")
        elif urllib.parse.urlsplit(entry.endpoint).port is None:
            warnings.append(f"{source}: neurons[{entry.name}].endpoint: `{entry.endpoint}` "
                            "names no port, so it means the scheme's (80 or 443); a neuron "
                            "listens on 13131 unless told otherwise")
    names = [entry.name for entry in config.neurons]
    for profile in profiles:
        where = f"{models}: models[{profile.id}]"
        for name in profile.neurons:
            if name not in names and not discovery:
                problems.append(
                    f"{where}.neurons: no neuron is named `{name}`{did_you_mean(name, names)}"
                    f" (in {source}: {', '.join(names) or 'none'})")
        cls = plugins.harnesses.get(profile.harness)
        if cls is None:
            warnings.append(f"{where}.harness: no harness `{profile.harness}` is installed "
                            "here, so the profile is not checked (the neurons must have it)")
        for key, reason in cls.check_profile(profile) if cls is not None else ():
            problems.append(f"{where}.{key}: {reason}")
        if cls is None or cls.needs_files:
            wrong = source_problem(profile.source)
            if wrong:
                problems.append(f"{where}.source: {wrong}")
    try:
        prepared = prepare(config, plugins, files=files)
    except ConfigProblems as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigProblems(problems)
    return Checked(config, list(profiles), prepared, warnings, files)


def check_file(path: str, plugins: Plugins, *, listen: str | None = None,
               metrics_listen: str | None = None) -> Checked:
    """Read cortex.toml (and the models file it names) and `check` it; `listen` and
    `metrics_listen` replace [gateway]'s (the command line's flags)."""
    try:
        config, profiles = load_gateway_config(path)
    except ConfigError as exc:
        raise ConfigProblems([exc.message]) from None
    changes = {k: v for k, v in (("listen", listen), ("metrics_listen", metrics_listen)) if v}
    if changes:
        config = msgspec.structs.replace(
            config, gateway=msgspec.structs.replace(config.gateway, **changes))
    models = str(Path(path).parent / config.models) if isinstance(config.models, str) \
        else path
    try:
        return check(config, profiles, plugins, files=Files(
            path, models, listen="--listen" if listen else None,
            metrics_listen="--metrics-listen" if metrics_listen else None))
    except ConfigProblems:
        raise
    except CortexError as exc:  # a plugin's own check that failed in its own way
        raise ConfigProblems([f"{path}: {exc.message}"]) from None
