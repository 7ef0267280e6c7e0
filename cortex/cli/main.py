"""`cortex`: serve the gateway, and inspect or steer a running one over its admin API."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.parse
from typing import Any

import click
import msgspec

import cortex
from cortex.cli.chat import chat
from cortex.cli.launch import launch
from cortex.cli.status import gib, table
from cortex.cli.validate import validate
from cortex.config import (
    GatewayConfig,
    GatewaySection,
    ModelProfile,
    NeuronConfig,
    NeuronEntry,
    load_gateway_config,
)
from cortex.errors import ConfigError
from cortex.jsonhttp import HttpFailure, call_json
from cortex.loops import LOOPS

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:31313"
EMBEDDED_NEURON = "127.0.0.1:13131"
url_option = click.option("--url", envvar="CORTEX_URL", default=DEFAULT_URL, show_default=True,
                          help="the gateway to talk to (env CORTEX_URL)")


@click.group()
@click.version_option(cortex.__version__, prog_name="cortex")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """cortex: one OpenAI- and Anthropic-compatible API over a fleet of neurons."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- serve -------------------------------------------------------------------------------

def _load(path: str) -> tuple[GatewayConfig, list[ModelProfile]]:
    try:
        return load_gateway_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def embedded_config(listen: str | None, neuron_listen: str
                    ) -> tuple[GatewayConfig, list[ModelProfile], NeuronConfig]:
    """No config: one neuron on loopback serving the bundled Gemma 3 270M."""
    from cortex.defaults import BUNDLED_GEMMA

    section = GatewaySection(listen=listen) if listen else GatewaySection()
    config = GatewayConfig(gateway=section, neurons=[
        NeuronEntry(name="local", endpoint=f"http://{neuron_listen}")])
    return config, [BUNDLED_GEMMA], NeuronConfig(listen=neuron_listen, name="local")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="cortex.toml; without it, run the embedded single-host default")
@click.option("--listen", help="host:port for the API (overrides [gateway] listen)")
@click.option("--neuron-listen", default=EMBEDDED_NEURON, show_default=True,
              help="embedded mode only: where the in-process neuron listens")
@click.option("--loop", type=click.Choice(LOOPS), default="auto", show_default=True,
              help="event loop: uvloop when installed (auto), or force one")
def serve(config_path: str | None, listen: str | None, neuron_listen: str, loop: str) -> None:
    """Serve the OpenAI API for the fleet (default 0.0.0.0:31313)."""
    from cortex.gateway import create_app
    from cortex.gateway.server import Served
    from cortex.gateway.server import serve as run
    from cortex.plugins import build_plugin_manager

    before: list[Served] = []
    if config_path is None:
        # Only this mode needs the neuron, imported here at run time, so a gateway-only
        # install still serves with --config.
        config, profiles, neuron_config = embedded_config(listen, neuron_listen)
        try:
            from cortex_neuron import create_app as neuron_app

            neuron = neuron_app(neuron_config)
        except ImportError as exc:
            raise click.ClickException(
                f"the embedded default needs the neuron ({exc}): pip install 'cortex[neuron]'"
                ", or pass --config") from None
        before.append(Served(neuron, neuron_listen, name="neuron"))
        reloader = None
    else:
        config, profiles = _load(config_path)
        if listen:
            config = msgspec.structs.replace(
                config, gateway=msgspec.structs.replace(config.gateway, listen=listen))
        path, override = config_path, listen

        def reloader() -> tuple[GatewayConfig, list[ModelProfile]]:
            fresh, fresh_profiles = load_gateway_config(path)
            if override:
                fresh = msgspec.structs.replace(
                    fresh, gateway=msgspec.structs.replace(fresh.gateway, listen=override))
            return fresh, fresh_profiles

    try:
        app = create_app(config, build_plugin_manager(), profiles=profiles, reloader=reloader)
    except ConfigError as exc:  # e.g. a keys file that lost its keys: one line, no trace
        raise click.ClickException(str(exc)) from None
    run(Served(app, config.gateway.listen, name="gateway"), before=before, loop=loop)


# --- talking to a running gateway ---------------------------------------------------------

def _request(url: str, path: str, *, method: str = "GET", body: object = None,
             timeout: float = 660.0) -> Any:
    # The admin key comes from an env var, not a flag: kept out of `ps`.
    try:
        return call_json(url, path, body=body, method=method, timeout=timeout,
                         bearer=os.environ.get("CORTEX_ADMIN_KEY"))
    except HttpFailure as exc:
        if exc.unreachable:
            raise click.ClickException(
                f"cannot reach the gateway at {url}: {exc.message}") from None
        raise click.ClickException(exc.message) from None


def _quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True,
              help="print /admin/fleet's JSON (with --watch, one document a line)")
@click.option("--watch", type=float, is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="redraw every SECONDS (default 2) until Ctrl-C")
@click.option("--count", type=click.IntRange(min=1),
              help="with --watch: stop after this many refreshes")
def status(url: str, as_json: bool, watch: float | None, count: int | None) -> None:
    """Nodes, GPUs and memory, loaded models, in-flight work and traffic."""
    from cortex.cli.status import show

    if watch is not None and watch <= 0:
        raise click.BadParameter("must be more than 0 seconds", param_hint="--watch")
    if count is not None and watch is None:
        raise click.UsageError("--count needs --watch")
    show(lambda: _request(url, "/admin/fleet", timeout=30.0), url=url, as_json=as_json,
         watch=watch, count=count)


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True)
def models(url: str, as_json: bool) -> None:
    """Every model the fleet can serve, and where each is loaded."""
    data = _request(url, "/v1/models")["data"]
    if as_json:
        _echo_json(data)
        return
    click.echo(table(
        ["MODEL", "STATE", "LOADED ON", "N_CTX", "PRIORITY", "PINNED", "ALIASES"],
        [[m["id"], m["state"], ",".join(m["loaded_on"]) or "-", m["n_ctx"], m["priority"],
          "yes" if m["pinned"] else "", ",".join(m["aliases"])] for m in data]))


def _model_action(url: str, model: str, action: str, node: str | None,
                  force: bool = False) -> Any:
    body: dict[str, Any] = {"node": node} if node else {}
    if force:
        body["force"] = True
    return _request(url, f"/admin/models/{_quote(model)}/{action}", method="POST", body=body)


@main.command()
@url_option
@click.argument("model")
@click.option("--node", help="load it on this neuron")
def load(url: str, model: str, node: str | None) -> None:
    """Load a model now (placing and evicting as a request would)."""
    reply = _model_action(url, model, "load", node)
    click.echo(f"{reply['model']} is ready on {reply['node']}")


@main.command()
@url_option
@click.argument("model")
@click.option("--node", help="unload it from this neuron only")
@click.option("--force", is_flag=True, help="end requests in flight instead of waiting")
def unload(url: str, model: str, node: str | None, force: bool) -> None:
    """Unload a model (from every node that holds it, unless --node)."""
    reply = _model_action(url, model, "unload", node, force)
    click.echo(f"{reply['model']} unloaded from {', '.join(reply['unloaded_from'])}")


@main.command()
@url_option
@click.argument("model")
@click.option("--node", help="load it on this neuron")
def pin(url: str, model: str, node: str | None) -> None:
    """Pin a model until the gateway restarts: load it and never evict it."""
    reply = _model_action(url, model, "pin", node)
    click.echo(f"{reply['model']} is pinned (on {reply['node']})")


@main.command()
@url_option
@click.argument("model")
def unpin(url: str, model: str) -> None:
    """Undo `cortex pin` (or a profile's pinned = true, until the next restart)."""
    reply = _model_action(url, model, "unpin", None)
    click.echo(f"{reply['model']} is no longer pinned")


@main.command()
@url_option
@click.argument("node")
@click.option("--wait", "wait_for", type=float, is_flag=False, flag_value=600.0, default=None,
              help="then wait until no request is in flight there (up to SECONDS, "
                   "default 600)")
def drain(url: str, node: str, wait_for: float | None) -> None:
    """Send no new work to NODE (requests, loads); what it runs finishes. Restarting the
    neuron, or `cortex undrain`, ends it: drain, wait, restart, for a rolling upgrade."""
    path = f"/admin/nodes/{_quote(node)}/drain"
    reply = _request(url, path, method="POST")
    if wait_for is not None:
        deadline = time.monotonic() + wait_for
        while reply["busy"] and time.monotonic() < deadline:
            time.sleep(1.0)
            reply = _request(url, path, method="POST")
        if reply["busy"]:
            raise click.ClickException(f"{node} is draining, {reply['busy']} request(s) "
                                       f"still in flight after {wait_for:.0f}s")
    click.echo(f"{node} is draining, {reply['busy']} request(s) in flight")


@main.command()
@url_option
@click.argument("node")
def undrain(url: str, node: str) -> None:
    """Undo `cortex drain NODE`: it takes new work again."""
    _request(url, f"/admin/nodes/{_quote(node)}/undrain", method="POST")
    click.echo(f"{node} takes new work again")


def explain_text(data: dict[str, Any]) -> str:
    """Render /admin/route's answer for people."""
    action, model, node = data["action"], data["model"], data.get("node")
    head = {"serve": f"serve on {node}", "join": f"wait for the load under way on {node}",
            "load": f"load on {node}", "none": "cannot be served now"}[action]
    lines = [f"{model}: {head} ({data.get('reason') or action})"]
    if data.get("victims"):
        lines.append(f"  evict: {', '.join(data['victims'])}")
    if data.get("needs") is not None:
        lines.append(f"  needs: {gib(data['needs'])} GiB, "
                     f"free after: {gib(data.get('free_after'))} GiB")
    lines.append(f"  expected wait: {data.get('expected_wait', 0):.1f}s")
    if "spill" in data:
        spill = data["spill"]
        lines.append(f"  another copy (spill_after): load on {spill['node']}" if spill
                     else "  another copy (spill_after): no node has room to spare")
    if data.get("candidates"):
        lines.append("  nodes:")
        lines.extend(f"    {c['node']}: {c['verdict']}" for c in data["candidates"])
    lines.extend(_ranking_lines(data))
    return "\n".join(lines)


def _ranking_lines(data: dict[str, Any], shown: int = 10) -> list[str]:
    """The eviction policy's fleet-wide order, the models this decision evicts marked."""
    ranking = data.get("ranking") or []
    if not ranking:
        return []
    victims = {(data.get("node"), v) for v in data.get("victims") or ()}
    lines = [f"  eviction order ({data.get('policy')}, fleet-wide, first to go first):"]
    for n, m in enumerate(ranking[:shown], 1):
        mark = "  <- evicted" if (m["node"], m["id"]) in victims else ""
        lines.append(f"    {n}. {m['id']} on {m['node']}: {gib(m['bytes'])} GiB, priority "
                     f"{m['priority']}, idle {m['idle_for']:.0f}s, "
                     f"{m['request_rate']:.2f} req/s{mark}")
    if len(ranking) > shown:
        lines.append(f"    ... and {len(ranking) - shown} more")
    return lines


@main.command()
@url_option
@click.option("--explain", is_flag=True, default=True,
              help="show the decision without acting on it (the only mode for now)")
@click.option("--node", help="only consider this neuron")
@click.option("--json", "as_json", is_flag=True)
@click.argument("model")
def route(url: str, explain: bool, node: str | None, as_json: bool, model: str) -> None:
    """Where a request for MODEL would go now: node, victims, expected wait."""
    query = f"?model={_quote(model)}" + (f"&node={_quote(node)}" if node else "")
    data = _request(url, f"/admin/route{query}")
    if as_json:
        _echo_json(data)
    else:
        click.echo(explain_text(data))


@main.command()
@url_option
def reload(url: str) -> None:
    """Re-read the running gateway's cortex.toml and models.toml (same as SIGHUP)."""
    reply = _request(url, "/admin/reload", method="POST", body={})
    click.echo(f"reloaded: {reply['summary']}")


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate cortex.toml, the models and the keys file it names; errors name file, key
    and reason."""
    from cortex.gateway.auth import KeyRing

    gateway, profiles = _load(path)
    try:
        keys = KeyRing(gateway.auth)
    except ConfigError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    access = ("open to anyone (open = true)" if keys.declared_open else
              "OPEN: no keys, and no [auth] open = true") if keys.open else "keys required"
    click.echo(f"{path}: ok ({len(gateway.neurons)} neurons, {len(profiles)} models, "
               f"{access})")


main.add_command(validate)
main.add_command(chat)
main.add_command(launch)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
