"""Write docs/configuration.md from the msgspec config Structs in cortex/config.py.

Keys, types and defaults come from the code (msgspec.inspect), so the reference cannot
drift from what the loader accepts; only the one-line descriptions are written by hand,
in DESCRIPTIONS below. `--check` exits 1 when the committed file is stale or a key has
no description (tests/docs/test_docs_config.py runs the same check).

    .venv/bin/python scripts/gen_config_docs.py          # rewrite docs/configuration.md
    .venv/bin/python scripts/gen_config_docs.py --check  # fail if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect

from cortex import Plugins, build_plugin_manager
from cortex.config import GatewayConfig, ModelProfile, ModelsFile, NeuronConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"

# One line per key, keyed by "StructQualname.field". A key of a config Struct without an
# entry here makes the generator (and the test) fail.
DESCRIPTIONS: dict[str, str] = {
    # cortex.toml
    "GatewayConfig.models": "a models.toml path (relative to cortex.toml), or an inline "
                            "array of `[[models]]` tables",
    "GatewayConfig.gateway": "the `[gateway]` table",
    "GatewayConfig.eviction": "the `[eviction]` table",
    "GatewayConfig.routing": "the `[routing]` table",
    "GatewayConfig.neurons": "one `[[neurons]]` table per neuron",
    "GatewayConfig.discovery": "one `[[discovery]]` table per source of neurons (DNS, a file, "
                               "a plugin's), used together with `[[neurons]]`",
    "GatewayConfig.auth": "the `[auth]` table",
    "GatewayConfig.dialects": "`[dialects.NAME]`: each dialect plugin's own `Options`; a "
                              "table naming no dialect is an error",
    "GatewaySection.listen": "host:port of the API and `/admin` (`--listen` or `CORTEX_LISTEN` "
                             "overrides it)",
    "GatewaySection.metrics_listen": "host:port where the gateway serves Prometheus `/metrics` "
                                     "(`--metrics-listen` or `CORTEX_METRICS_LISTEN` "
                                     "overrides it)",
    "GatewaySection.load_timeout": "seconds a request waits for its model to be placed and "
                                   "loaded, then 504",
    "GatewaySection.request_timeout": "seconds without a byte from a neuron before the "
                                      "request fails",
    "GatewaySection.queue_limit": "requests waiting per model (for a load, or beyond its "
                                  "slots) before 429 with `Retry-After`",
    "GatewaySection.poll_interval": "seconds between `/status` polls of each neuron "
                                    "(jittered by ±20%)",
    "GatewaySection.poll_timeout": "seconds a `/status` poll may take before it counts as a "
                                   "failed poll (a stopped or frozen neuron)",
    "GatewaySection.down_after": "consecutive failed polls or requests that mark a node down",
    "GatewaySection.keepalive_interval": "seconds between SSE `: keep-alive` comments while "
                                         "a stream waits for a load",
    "GatewaySection.retries": "further nodes tried when one fails before the first byte "
                              "(see `poison_retries` for a neuron that died holding it)",
    "GatewaySection.connect_timeout": "seconds to open a connection to a neuron",
    "GatewaySection.poison_retries": "further nodes a request may be sent to after a neuron "
                                     "died holding it before its first byte (502 "
                                     "`upstream_died` beyond; docs/operations.md)",
    "GatewaySection.poison_ttl": "seconds a request a neuron died holding is refused (400 "
                                 "`request_quarantined`) once over `poison_retries`; 0 "
                                 "remembers none",
    "GatewaySection.max_body_bytes": "a larger request body gets 413, counted as it streams "
                                     "in (docs/operations.md, security and input limits)",
    "GatewaySection.max_header_bytes": "a larger request line plus headers gets 431, counted "
                                       "to the byte",
    "GatewaySection.max_tools_bytes": "a request whose `tools` array is more JSON than this "
                                      "gets 413",
    "GatewaySection.allowed_hosts": "without keys, `Host` names answered beyond IP literals, "
                                    "`localhost`, the listen host and the machine's name "
                                    "(`*.example.com`, or `*` for any); 403 otherwise",
    "GatewaySection.body_timeout": "seconds a request body may go without a byte; then 408 "
                                   "and the connection is closed",
    "GatewaySection.max_stop_strings": "more stop strings in a request (OpenAI `stop`, "
                                       "Anthropic `stop_sequences`) get 400 naming the field",
    "GatewaySection.max_stop_bytes": "more UTF-8 bytes of stop strings in a request get 400 "
                                     "naming the field",
    "GatewaySection.drain_timeout": "seconds SIGTERM/SIGINT wait for requests in flight "
                                    "to finish (new ones get 503) before the gateway exits",
    "EvictionConfig.strategy": "the eviction policy plugin, by `name`",
    "EvictionConfig.defrag_after_cycles": "after this many unloads on a node, unload its idle "
                                          "models and load them again; 0 turns it off",
    "EvictionConfig.options": "the chosen policy's own `Options` (`[eviction.options]`)",
    "RoutingConfig.strategy": "the routing strategy plugin, by `name`",
    "RoutingConfig.options": "the chosen strategy's own `Options` (`[routing.options]`)",
    "NeuronEntry.name": "the node's name in profiles' `neurons`, the admin API and the CLI",
    "NeuronEntry.endpoint": "`http://host:port` of its `neuron serve`",
    "NeuronEntry.secret": "the neuron's shared secret, sent as `Authorization: Bearer`; "
                          "empty is an error",
    "NeuronEntry.secret_file": "a file holding `secret` (a Kubernetes Secret, say), read at "
                               "start and at each reload; empty or unreadable is an error",
    "DiscoveryConfig.source": "the discovery plugin, by `name`: `dns`, `file` or a third "
                              "party's",
    "DiscoveryConfig.secret": "the shared secret of the neurons it finds, sent as "
                              "`Authorization: Bearer`; empty is an error",
    "DiscoveryConfig.secret_file": "a file holding `secret`, read at start and at each "
                                   "reload; empty or unreadable is an error",
    "DiscoveryConfig.linger": "seconds a node missing from the answers stays in the fleet "
                              "before it is drained and dropped (a flapping record does not "
                              "flap the fleet); a failed answer never counts",
    "DiscoveryConfig.options": "the source's own `Options` (`[discovery.options]`, below)",
    "AuthConfig.api_keys": "client keys, sent as `Authorization: Bearer` or `x-api-key` (also "
                           "`CORTEX_API_KEYS`); with none at all the gateway is open",
    "AuthConfig.api_keys_file": "a file of client keys, one per line, `#` comments; missing, "
                                "unreadable or empty refuses start and reload",
    "AuthConfig.admin_keys": "keys allowed on `/admin` (also `CORTEX_ADMIN_KEYS`)",
    "AuthConfig.requests_per_minute": "per-key request limit (429 with `Retry-After`); 0 means "
                                      "unlimited",
    "AuthConfig.max_concurrent_requests": "requests one key may have in flight at once "
                                          "(429 beyond); 0 means no cap",
    "AuthConfig.keys": "one `[[auth.keys]]` table per client key that has its own allow-list "
                       "or limit",
    "AuthConfig.open": "`true`: no keys on purpose (an error beside any key); else a gateway "
                       "without keys warns at every start and reload",
    "ApiKey.key": "the client key",
    "ApiKey.models": "model ids or aliases this key may use (403 otherwise); empty = any",
    "ApiKey.requests_per_minute": "this key's limit, over `[auth] requests_per_minute`",
    "ApiKey.max_concurrent_requests": "this key's cap, over `[auth] "
                                      "max_concurrent_requests`",
    # models.toml
    "ModelsFile.models": "one `[[models]]` table per profile",
    "ModelProfile.id": "the name clients put in `model`; may contain `/`",
    "ModelProfile.source": "`bundled:NAME`, a path inside the neuron's `model_dirs`, "
                           "`hf://owner/repo:QUANT` or `hf://owner/repo[@rev]/file.gguf`",
    "ModelProfile.aliases": "other names for the profile; ids and aliases are unique. "
                            "One with `*` or `?` is a pattern (`claude-*`): it matches "
                            "names no id or alias spells out, the most specific first",
    "ModelProfile.harness": "the neuron's harness plugin that runs it",
    "ModelProfile.n_ctx": "context tokens per slot",
    "ModelProfile.slots": "sequences decoded together (the KV cache holds n_ctx x slots)",
    "ModelProfile.n_gpu_layers": "layers offloaded to the GPU; -1 means all",
    "ModelProfile.n_threads": "CPU threads; unset: the harness setting, else physical cores",
    "ModelProfile.n_batch": "most tokens one decode step takes; llama.cpp's compute buffer "
                            "grows with it (Gemma 3: 1 MiB a token), and the memory estimate "
                            "counts it; past n_ctx x slots it is not used",
    "ModelProfile.chat_format": "a llama.cpp built-in chat format (`gemma`, `chatml`, ...); "
                                "not with `chat_template`",
    "ModelProfile.chat_template": "a Jinja chat template; wins over the GGUF's own",
    "ModelProfile.embeddings": "load for `/v1/embeddings` only",
    "ModelProfile.max_tokens": "cap on tokens generated per request",
    "ModelProfile.default_max_tokens": "the output budget of a request that sets none "
                                       "(Ollama's `num_predict`); a client may ask for "
                                       "more, up to `max_tokens`; unset: to the context's end",
    "ModelProfile.priority": "gateway: the `priority` policy evicts lower values first",
    "ModelProfile.pinned": "gateway: load at start-up, never evict or expire",
    "ModelProfile.neurons": "gateway: the nodes that may load it; empty means any",
    "ModelProfile.ttl": "gateway: unload after this many idle seconds; unset means never",
    "ModelProfile.spill_after": "gateway: load another copy on a node with room to spare "
                                "once a request would queue behind this many others; "
                                "unset means never",
    "ModelProfile.max_copies": "gateway: the most copies spill_after keeps on the fleet at "
                               "once; unset means one per node with room",
    # neuron.toml
    "NeuronConfig.listen": "host:port (`[::1]:port` for IPv6); `--listen` overrides it",
    "NeuronConfig.name": "the node name in `/status`; empty means the host name",
    "NeuronConfig.model_dirs": "local GGUF paths must resolve inside one of these",
    "NeuronConfig.cache_dir": "bundled models are assembled under `<cache_dir>/models`",
    "NeuronConfig.hf_cache": "HuggingFace cache; unset: `HF_HUB_CACHE`, `HF_HOME/hub`, the "
                             "library default",
    "NeuronConfig.memory_budget": "a fixed budget (bytes or `22GiB`); unset: GPU memory (or "
                                  "RAM) minus `memory_headroom`",
    "NeuronConfig.memory_headroom": "kept free when the budget is detected",
    "NeuronConfig.overhead_bytes": "fixed per-model overhead added to every estimate",
    "NeuronConfig.secret": "when set, every route but `/health` needs `Bearer <secret>`; "
                           "empty is an error",
    "NeuronConfig.secret_file": "a file holding `secret` (a Kubernetes Secret, say), read at "
                                "start; empty or unreadable is an error",
    "NeuronConfig.preload": "profiles loaded at start-up (`[[preload]]`, the keys of "
                            "`[[models]]`)",
    "NeuronConfig.harness": "`[harness.NAME]`: each harness plugin's own `Options`",
    # dialect plugins' Options ([dialects.NAME] in cortex.toml)
    "AnthropicDialect.Options.match_stops": "match `stop_sequences` in the gateway, so a hit "
                                            "reads `stop_reason: stop_sequence`; `false` "
                                            "sends them to the neuron as `stop`, and a hit "
                                            "reads `end_turn`",
    "ResponsesDialect.Options.store_size": "responses kept for `previous_response_id` and "
                                           "`GET /v1/responses/{id}`, per gateway replica, "
                                           "least recently used out first; 0 keeps none",
    "ResponsesDialect.Options.store_bytes": "the most bytes those kept responses take; a "
                                            "response over it is not kept",
    "OllamaDialect.Options.version": "what `/api/version` answers; clients gate features "
                                     "on it (Codex `--oss` needs 0.13.4 or later)",
    # discovery plugins' Options ([discovery.options] in cortex.toml)
    "DnsSource.Options.interval": "seconds between two lookups; sooner when the records' TTL "
                                  "is (a TTL under 0.5 s counts as 0.5 s)",
    "DnsSource.Options.name": "an SRV name (`_neuron._tcp.gpu.internal`: one node per target, "
                              "on its port), or with `port` an A/AAAA name (one per address)",
    "DnsSource.Options.port": "the neurons' port, for an A/AAAA `name`; unset: `name` is SRV",
    "DnsSource.Options.nameservers": "resolvers to ask, `IP` or `IP:PORT`; empty: the "
                                     "system's (`/etc/resolv.conf`)",
    "DnsSource.Options.timeout": "seconds one lookup may take before it counts as failed",
    "DnsSource.Options.scheme": "`http` or `https`, for the endpoints it makes",
    "FileSource.Options.interval": "seconds between two looks at the file (read again when "
                                   "its size, time or inode changed)",
    "FileSource.Options.path": "the file: `[[neurons]]` tables of `name` and `endpoint` "
                               "(TOML), or a JSON list of them (or `{\"neurons\": [...]}`)",
    "FileSource.Options.format": "`toml` or `json`; unset: from the suffix (`.json`, else "
                                 "TOML)",
    # harness plugins' Options ([harness.NAME] in neuron.toml)
    "LlamaCppHarness.Options.n_threads": "CPU threads; unset: physical cores (a profile's "
                                         "`n_threads` wins)",
    "LlamaCppHarness.Options.flash_attn": "flash attention (much slower on CPU)",
    "LlamaCppHarness.Options.use_mmap": "map the GGUF instead of reading it",
    "LlamaCppHarness.Options.verbose": "llama.cpp's own logging",
    "LlamaCppHarness.Options.prefill_chunk": "prompt tokens per step while other streams "
                                             "generate",
    "LlamaCppHarness.Options.keep_weights": "keep an unloaded model's weights while the "
                                            "budget has room, so loading it again makes "
                                            "only a context ([neuron.md](neuron.md"
                                            "#kept-weights-a-model-swapped-back-in))",
    "SyntheticHarness.Options.rate": "tokens per second per stream; 0 means as fast as possible",
    "SyntheticHarness.Options.ttft_ms": "delay before the first token (a stand-in for prefill)",
    "SyntheticHarness.Options.tokens": "tokens generated when neither the request nor the "
                                       "profile's `default_max_tokens` sets a budget",
    "SyntheticHarness.Options.bytes": "the memory a model claims, so placement and eviction "
                                      "have work to do",
    "SyntheticHarness.Options.load_ms": "how long a load takes",
    "SyntheticHarness.Options.die_on": "tests only: a prompt containing this string kills "
                                       "the neuron (SIGKILL) before its first token, as a "
                                       "crash would; unset by default",
    "SyntheticHarness.Options.script": "tests of agent clients only: scripted replies to "
                                       "requests that offer tools, the Nth assistant turn "
                                       "gets step N (the last repeats); empty by default",
    "SyntheticHarness.Options.reasoning": "tests of thinking only: words every chat reply "
                                          "begins with as reasoning (`reasoning_content`), "
                                          "apart from its answer; empty by default",
    "ScriptStep.text": "the words of a plain reply",
    "ScriptStep.tool": "the tool a scripted reply calls (instead of text)",
    "ScriptStep.arguments": "the arguments of that call",
}

INTRO = """\
# Configuration reference

<!-- Generated by scripts/gen_config_docs.py from cortex/config.py; do not edit by hand.
     tests/docs/test_docs_config.py fails when this file is stale. -->

Three TOML files, each decoded by msgspec straight into the Structs in
`cortex/config.py`. Unknown keys are errors, and every error names the file, the key
and the reason (`cortex config check cortex.toml` checks the gateway's two files without
serving). Sizes (`memory_budget`, ...) take a number of bytes or a string such as
`"8GiB"` or `"512MB"`. A default of *unset* means the key is absent (TOML has no null).

Annotated examples with every key:
[cortex.example.toml](../examples/cortex.example.toml),
[models.example.toml](../examples/models.example.toml),
[neuron.example.toml](../examples/neuron.example.toml). How the gateway uses its keys:
[gateway.md](gateway.md); the neuron's: [neuron.md](neuron.md).
"""

FILES: tuple[tuple[str, type[msgspec.Struct], str], ...] = (
    ("cortex.toml", GatewayConfig,
     "The gateway: `cortex serve --config cortex.toml`. Reloaded on SIGHUP or "
     "`cortex reload`."),
    ("models.toml", ModelsFile,
     "Model profiles, named by cortex.toml's `models`. The neuron-side keys are sent to "
     "a neuron verbatim on load; the keys marked *gateway* stay in the gateway."),
    ("neuron.toml", NeuronConfig,
     "One per GPU host: `neuron serve --config neuron.toml`. Every key has a default, so "
     "the neuron also runs with no file."),
)


@dataclass
class Section:
    """One TOML table's keys, rendered as one markdown table."""

    heading: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    note: str = ""


def describe_type(t: inspect.Type) -> str:
    """A TOML-flavoured type name with its constraints, e.g. `integer ≥ 1`."""
    if isinstance(t, inspect.UnionType):
        return " or ".join(describe_type(u) for u in t.types
                           if not isinstance(u, inspect.NoneType))
    if isinstance(t, inspect.StrType):
        return "non-empty string" if t.min_length else "string"
    if isinstance(t, inspect.IntType | inspect.FloatType):
        name = "integer" if isinstance(t, inspect.IntType) else "number"
        bounds = [f"≥ {t.ge}" if t.ge is not None else "", f"> {t.gt}" if t.gt is not None else "",
                  f"≤ {t.le}" if t.le is not None else "", f"< {t.lt}" if t.lt is not None else ""]
        return " ".join([name, *(b for b in bounds if b)])
    if isinstance(t, inspect.BoolType):
        return "boolean"
    if isinstance(t, inspect.LiteralType):
        return " or ".join(f"`{toml_value(v)}`" for v in t.values)
    if isinstance(t, inspect.ListType):
        if isinstance(t.item_type, inspect.StructType):
            return "array of tables"
        return f"array of {describe_type(t.item_type)}s"
    if isinstance(t, inspect.DictType | inspect.StructType):
        return "table"
    if isinstance(t, inspect.AnyType):
        return "any"
    raise TypeError(f"no TOML name for {t!r}")


def toml_value(value: Any) -> str:
    """A default as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if not value else f'"{value}"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else "{" + ", ".join(
            f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def describe_default(f: inspect.Field) -> str:
    if f.required:
        return "*required*"
    value = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
    if value is None:
        return "*unset*"
    if isinstance(value, msgspec.Struct):
        return ""
    return f"`{toml_value(value)}`"


def _struct_item(t: inspect.Type) -> inspect.StructType | None:
    """The Struct a field holds as a table or an array of tables, if any."""
    if isinstance(t, inspect.StructType):
        return t
    if isinstance(t, inspect.ListType) and isinstance(t.item_type, inspect.StructType):
        return t.item_type
    return None


def walk(struct: type[Any], heading: str, *, missing: list[str],
         seen: dict[type[Any], str]) -> list[Section]:
    """Sections for `struct` and the tables nested in it; undescribed keys go to `missing`.

    A Struct documented once (ModelProfile under `[[models]]`) is referred to, not
    repeated, when it appears again (`[[preload]]`).
    """
    info = inspect.type_info(struct)
    assert isinstance(info, inspect.StructType)
    seen.setdefault(struct, heading)
    top = Section(heading)
    nested: list[Section] = []
    for f in info.fields:
        key = f"{struct.__qualname__}.{f.name}"
        text = DESCRIPTIONS.get(key)
        if text is None:
            missing.append(key)
            text = ""
        inner = _struct_item(f.type)
        if inner is not None and not isinstance(f.type, inspect.UnionType):
            path = f"{heading.strip('[]')}.{f.encode_name}" if heading.startswith("[") \
                else f.encode_name
            child = f"[[{path}]]" if isinstance(f.type, inspect.ListType) else f"[{path}]"
            if inner.cls in seen:
                note = f"The keys of models.toml's `{seen[inner.cls]}`."
                nested.append(Section(child, note=note))
            else:
                nested.extend(walk(inner.cls, child, missing=missing, seen=seen))
            continue
        top.rows.append((f"`{f.encode_name}`", describe_type(f.type), describe_default(f), text))
    return ([top] if top.rows else []) + nested


def plugin_sections(registry: dict[str, type[Any]], table: str,
                    missing: list[str]) -> list[Section]:
    """`[TABLE.NAME]` tables from the default plugins' Options Structs (`[harness.NAME]`
    in neuron.toml, `[dialects.NAME]` in cortex.toml)."""
    sections: list[Section] = []
    for name, cls in sorted(registry.items()):
        options = cls.Options
        if not msgspec.structs.fields(options):
            continue
        sections.extend(walk(options, f"[{table}.{name}]", missing=missing, seen={}))
    return sections


def _policy_note(kind: str, registry: dict[str, type[Any]]) -> str:
    names = ", ".join(f"`{n}`" for n in sorted(registry))
    with_options = [n for n, cls in sorted(registry.items())
                    if msgspec.structs.fields(cls.Options)]
    takes = ("; " + ", ".join(f"`{n}`" for n in with_options) + " take options") \
        if with_options else "; none of them takes options"
    return f"Default {kind}: {names}{takes}."


def render_section(section: Section) -> Iterable[str]:
    heading = section.heading
    yield f"### `{heading}`" if heading.startswith("[") else f"### {heading.capitalize()}"
    yield ""
    if section.note:
        yield section.note
        yield ""
    if section.rows:
        yield "| key | type | default | description |"
        yield "|---|---|---|---|"
        for row in section.rows:
            yield "| " + " | ".join(row) + " |"
        yield ""


def generate() -> tuple[str, list[str]]:
    """The reference's text, and the keys that have no description."""
    missing: list[str] = []
    plugins = Plugins(build_plugin_manager(entry_points=False))
    lines = [INTRO]
    for filename, struct, summary in FILES:
        lines += [f"## {filename}", "", summary, ""]
        # neuron.toml's [[preload]] refers to models.toml's [[models]] instead of repeating it.
        seen: dict[type[Any], str] = {ModelProfile: "[[models]]"} \
            if struct is NeuronConfig else {}
        sections = walk(struct, "top-level keys", missing=missing, seen=seen)
        if struct is GatewayConfig:
            # Inline `[[models]]` in cortex.toml take the keys of models.toml's.
            sections.insert(1, Section("[[models]]", note="Inline profiles: the keys of "
                                                          "models.toml's `[[models]]`."))
            sections += plugin_sections(plugins.dialects, "dialects", missing)
            for name, cls in sorted(plugins.discovery_sources.items()):
                sections += walk(cls.Options, f'[discovery.options] for source = "{name}"',
                                 missing=missing, seen={})
            for section in sections:
                if section.heading == "[eviction]":
                    section.note = _policy_note("eviction policies", plugins.eviction_policies)
                elif section.heading == "[routing]":
                    section.note = _policy_note("routing strategies", plugins.routing_strategies)
        if struct is NeuronConfig:
            sections += plugin_sections(plugins.harnesses, "harness", missing)
        for section in sections:
            lines.extend(render_section(section))
    return "\n".join(lines).rstrip("\n") + "\n", missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/configuration.md is stale or a key is undescribed")
    args = parser.parse_args(argv)
    text, missing = generate()
    if missing:
        print("keys without a description in scripts/gen_config_docs.py: "
              + ", ".join(missing), file=sys.stderr)
        return 1
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run scripts/gen_config_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
