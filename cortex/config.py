"""Configuration types for cortex.toml, models.toml and neuron.toml.

TOML is parsed by msgspec (on top of the standard library's tomllib) straight into
these Structs; unknown keys are rejected. Every error is re-raised as a ConfigError
whose message names the file, the key and the reason.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from cortex.aliases import ambiguous_patterns, is_pattern
from cortex.errors import ConfigError
from cortex.sharedsecret import load_secret
from cortex.stops import MAX_STOP_BYTES, MAX_STOP_STRINGS

__all__ = [
    "ApiKey",
    "AuthConfig",
    "DiscoveryConfig",
    "EvictionConfig",
    "GatewayConfig",
    "GatewaySection",
    "ModelProfile",
    "ModelsFile",
    "NeuronConfig",
    "NeuronEntry",
    "RoutingConfig",
    "decode_config",
    "did_you_mean",
    "load_gateway_config",
    "load_models_file",
    "load_neuron_config",
    "parse_bytes",
    "split_listen",
]

T = TypeVar("T")

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
#: The most tokens one decode step may take: llama.cpp's compute buffer grows with it
#: (for Gemma 3, 1 MiB a token), and past n_ctx x slots it is never used.
MAX_N_BATCH = 65536
#: ggml's GGML_MAX_N_THREADS: a profile asking 100,000 threads exhausted a node's memory
#: creating them, and killed the neuron.
MAX_N_THREADS = 512
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Config base: unknown keys are an error, snake_case keys as written in TOML."""


class ModelProfile(Base, kw_only=True):
    """One model a fleet can serve: where its weights come from and how to run them.

    Used in models.toml (gateway) and sent verbatim to a neuron's /models/load.
    `source` is a path (inside the neuron's model_dirs), `hf://owner/repo/file.gguf`,
    `hf://owner/repo:Q4_K_M` (a quant pattern; split GGUFs included) or
    `bundled:gemma3-270m` (a model shipped as a Python package).
    """

    id: Annotated[str, msgspec.Meta(min_length=1)]
    source: Annotated[str, msgspec.Meta(min_length=1)]
    aliases: list[str] = []
    harness: str = "llamacpp"
    n_ctx: PositiveInt = 4096
    slots: PositiveInt = 1
    n_gpu_layers: int = -1
    n_threads: Annotated[int, msgspec.Meta(ge=1, le=MAX_N_THREADS)] | None = None
    n_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_N_BATCH)] = 512
    chat_format: str | None = None
    chat_template: str | None = None
    embeddings: bool = False
    max_tokens: PositiveInt | None = None
    # The output budget of a request that sets none (Ollama's Modelfile `num_predict`):
    # a client may ask for more, up to max_tokens. Unset: up to the context's end.
    default_max_tokens: PositiveInt | None = None
    priority: int = 0
    pinned: bool = False
    neurons: list[str] = []
    ttl: NonNegative | None = None
    # Load another copy (on a node with room to spare) once a request would queue
    # behind this many others on the copy it is sent to.
    spill_after: PositiveInt | None = None
    # The most copies spill_after keeps on the fleet at once (unset: one per node).
    max_copies: PositiveInt | None = None

    def __post_init__(self) -> None:
        if self.chat_format and self.chat_template:
            raise ValueError("set chat_format or chat_template, not both")

    def for_neuron(self) -> ModelProfile:
        """The profile without gateway-only fields (aliases, pinning, priority, affinity,
        ttl, spill_after, max_copies): what a neuron loads. Editing those in models.toml
        must not disturb a loaded model."""
        return msgspec.structs.replace(self, aliases=[], pinned=False, priority=0, neurons=[],
                                       ttl=None, spill_after=None, max_copies=None)

    def fingerprint(self) -> str:
        """A digest of what a neuron runs (`for_neuron()`): a gateway compares it with the
        one in the neuron's /status to see that a loaded copy's profile has changed."""
        encoded = msgspec.json.encode(self.for_neuron())
        return hashlib.blake2b(encoded, digest_size=12).hexdigest()


class ModelsFile(Base, kw_only=True):
    models: list[ModelProfile] = []


class NeuronConfig(Base, kw_only=True):
    """neuron.toml. Every key has a default, so the daemon runs with no file at all."""

    listen: str = "0.0.0.0:13131"
    name: str = ""
    model_dirs: list[str] = []
    cache_dir: str = "~/.cache/cortex"
    hf_cache: str | None = None
    memory_budget: int | str | None = None
    memory_headroom: int | str = "512MiB"
    overhead_bytes: int | str = "256MiB"
    secret: str | None = None
    # A file holding the secret (a Kubernetes Secret's, say), read into `secret` at start.
    secret_file: str | None = None
    preload: list[ModelProfile] = []
    harness: dict[str, dict[str, Any]] = {}

    def __post_init__(self) -> None:
        load_secret(self)
        split_listen(self.listen)
        for key in ("memory_budget", "memory_headroom", "overhead_bytes"):
            value = getattr(self, key)
            if value is not None:
                parse_bytes(value)

    @property
    def node_name(self) -> str:
        return self.name or socket.gethostname()


class GatewaySection(Base, kw_only=True):
    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    load_timeout: NonNegative = 600.0
    request_timeout: NonNegative = 600.0
    queue_limit: PositiveInt = 64
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    poll_timeout: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    down_after: PositiveInt = 3
    keepalive_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Containment (docs/operations.md, "A request that kills a neuron"): further nodes a
    # request may reach after a neuron died holding it, and how long its body is refused.
    poison_retries: Annotated[int, msgspec.Meta(ge=0)] = 0
    poison_ttl: NonNegative = 600.0
    # Input limits (docs/operations.md, "Security and input limits").
    max_body_bytes: PositiveInt = 16 * 2**20
    max_header_bytes: PositiveInt = 64 * 2**10
    max_tools_bytes: PositiveInt = 2**20
    # Seconds a request body may go without a byte before 408 (slow or stalled clients).
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Host names a gateway without keys answers beyond IP literals, localhost, its listen
    # host and the machine's name (DNS rebinding; cortex.gateway.origins).
    allowed_hosts: list[str] = []
    max_stop_strings: PositiveInt = MAX_STOP_STRINGS
    max_stop_bytes: PositiveInt = MAX_STOP_BYTES
    drain_timeout: NonNegative = 30.0


class EvictionConfig(Base, kw_only=True):
    strategy: str = "lru"
    defrag_after_cycles: int = 0
    options: dict[str, Any] = {}


class RoutingConfig(Base, kw_only=True):
    strategy: str = "affinity"
    options: dict[str, Any] = {}


class NeuronEntry(Base, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    endpoint: Annotated[str, msgspec.Meta(min_length=1)]
    secret: str | None = None
    # Read into `secret` at start and at each reload.
    secret_file: str | None = None

    def __post_init__(self) -> None:
        load_secret(self)


class DiscoveryConfig(Base, kw_only=True):
    """`[[discovery]]`: neurons found by a discovery plugin (cortex.DiscoverySource), as
    well as the `[[neurons]]` list. A node missing from its answers stays `linger` seconds
    (a flapping record does not flap the fleet), then is drained and dropped."""

    source: Annotated[str, msgspec.Meta(min_length=1)]
    secret: str | None = None
    secret_file: str | None = None
    linger: NonNegative = 30.0
    options: dict[str, Any] = {}

    def __post_init__(self) -> None:
        load_secret(self)


class ApiKey(Base, kw_only=True):
    """A client key with its own model allow-list and request limit (`[[auth.keys]]`)."""

    key: Annotated[str, msgspec.Meta(min_length=1)]
    models: list[str] = []
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_concurrent_requests: Annotated[int, msgspec.Meta(ge=0)] | None = None


class AuthConfig(Base, kw_only=True):
    """`[auth]`. With no keys at all the gateway is open: `open = true` says so on
    purpose (else every start and reload warns). cortex.gateway.auth.KeyRing reads the keys."""

    api_keys: list[str] = []
    api_keys_file: str | None = None
    admin_keys: list[str] = []
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Requests one key may have in flight at once (429 beyond); 0 = no cap.
    max_concurrent_requests: Annotated[int, msgspec.Meta(ge=0)] = 0
    keys: list[ApiKey] = []
    open: bool = False


class GatewayConfig(Base, kw_only=True):
    """cortex.toml. `models` names a models.toml (relative to this file) or is inline."""

    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    eviction: EvictionConfig = msgspec.field(default_factory=EvictionConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    neurons: list[NeuronEntry] = []
    discovery: list[DiscoveryConfig] = []
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    models: str | list[ModelProfile] = []
    # `[dialects.NAME]`: each dialect plugin's own Options (cortex.Plugins.dialect_options).
    dialects: dict[str, dict[str, Any]] = {}


_PATH_RE = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_STEP_RE = re.compile(r"\.?([^.\[]+)|\[(\d+)\]")
_TOML_TYPES = (datetime.datetime, datetime.date, datetime.time)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean `x`?)` for the closest of `choices` to a misspelt `word`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def named_key(path: str, data: Any) -> str:
    """A msgspec error path (`models[0].n_ctx`) as people know the entry: a table in an
    array is named by its `id` or `name` (`models[gemma3-270m].n_ctx`) when it has one."""
    out: list[str] = []
    node: Any = data
    for match in _STEP_RE.finditer(path):
        field, index = match.groups()
        if field is not None:
            out.append(("." if out else "") + field)
            node = node.get(field) if isinstance(node, dict) else None
            continue
        item = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
        name = next((item[k] for k in ("id", "name") if isinstance(item, dict)
                     and isinstance(item.get(k), str) and item[k]), None)
        out.append(f"[{name if name is not None else index}]")
        node = item
    return "".join(out)


def validation_error(exc: msgspec.ValidationError, data: Any) -> tuple[str, str]:
    """(the dotted key, the reason) of a msgspec validation error over `data`."""
    match = _PATH_RE.match(str(exc))
    assert match is not None
    key = named_key(match.group("path") or "", data)
    return key, match.group("reason").replace("`", "")


def decode_config(data: bytes | str, kind: type[T], *, source: str) -> T:
    """Decode TOML into `kind`; errors become ConfigError("file: key: reason"), where an
    entry of an array of tables is named by its id or name rather than its index."""
    try:
        raw = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return msgspec.convert(raw, kind, builtin_types=_TOML_TYPES)
    except msgspec.ValidationError as exc:
        key, reason = validation_error(exc, raw)
        raise ConfigError(f"{source}: {key or '(top level)'}: {reason}") from None


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_neuron_config(path: str | os.PathLike[str] | None) -> NeuronConfig:
    if path is None:
        return NeuronConfig()
    return decode_config(_read(path), NeuronConfig, source=str(path))


def load_models_file(path: str | os.PathLike[str]) -> list[ModelProfile]:
    return decode_config(_read(path), ModelsFile, source=str(path)).models


def load_gateway_config(path: str | os.PathLike[str]) -> tuple[GatewayConfig, list[ModelProfile]]:
    """Read cortex.toml and the models it points at; check that ids and aliases are unique."""
    config = decode_config(_read(path), GatewayConfig, source=str(path))
    if isinstance(config.models, str):
        models_path = Path(path).parent / config.models
        profiles = load_models_file(models_path)
        where = str(models_path)
    else:
        profiles = config.models
        where = str(path)
    seen: dict[str, str] = {}
    for index, profile in enumerate(profiles):
        for key, name in (("id", profile.id), *(("aliases", a) for a in profile.aliases)):
            if name in seen:
                entry = profile.id if profile.id not in seen else index
                raise ConfigError(f"{where}: models[{entry}].{key}: `{name}` is already used "
                                  f"by `{seen[name]}`")
            seen[name] = profile.id
    _check_patterns(profiles, where)
    names = [n.name for n in config.neurons]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ConfigError(f"{path}: neurons[{index}].name: duplicate neuron name `{name}`")
    return config, profiles


def _check_patterns(profiles: list[ModelProfile], where: str) -> None:
    """Alias patterns (cortex.aliases): wildcards * and ? only, and no name that two
    profiles' equally specific patterns would both claim."""
    owners = [(name, p.id) for p in profiles for name in p.aliases if is_pattern(name)]
    try:
        clash = ambiguous_patterns(owners)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if clash is not None:
        first, first_owner, second, second_owner = clash
        raise ConfigError(
            f"{where}: alias patterns `{first}` (of `{first_owner}`) and `{second}` (of "
            f"`{second_owner}`) are equally specific and can match the same name; make one "
            "of them more specific")


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
          "gib": 1024**3, "tib": 1024**4}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | str) -> int:
    """Turn 8589934592, "8GiB" or "512 MB" into bytes."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _BYTES_RE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"`{value}` is not a size (try 8GiB, 512MB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[unit])


def split_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:port")."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen must be host:port, got `{listen}`")
    return host.strip("[]") or "0.0.0.0", int(port)


