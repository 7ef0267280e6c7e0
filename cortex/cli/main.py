"""`cortex`: serve the gateway, and inspect or steer a running one over its admin API."""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import click

import cortex
from cortex.cli.chat import chat
from cortex.cli.launch import launch
from cortex.cli.remote import (
    KEY_HELP,
    URL_HELP,
    Globals,
    admin_key,
    gateway_options,
    request,
)
from cortex.cli.serve import config, serve
from cortex.cli.status import gib, table
from cortex.cli.validate import validate

__all__ = ["main"]

#: `--url` and `--admin-key` after a subcommand (they may come before it too: `main`).
url_option = gateway_options
_request = request


@click.group(epilog="Environment: CORTEX_URL (--url) and CORTEX_ADMIN_KEY (--admin-key) "
             "for the commands that talk to a running gateway; `cortex serve --help` lists "
             "its own.")
@click.version_option(cortex.__version__, prog_name="cortex")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--url", envvar="CORTEX_URL", metavar="URL", help=URL_HELP)
@click.option("--admin-key", envvar="CORTEX_ADMIN_KEY", metavar="KEY",
              help=KEY_HELP)
@click.pass_context
def main(ctx: click.Context, log_level: str, url: str | None, admin_key: str | None) -> None:
    """cortex: one OpenAI- and Anthropic-compatible API over a fleet of neurons."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Globals(url, admin_key)


# --- talking to a running gateway ---------------------------------------------------------

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
    pause: Callable[[float], None] = time.sleep
    if watch is not None:  # redraw when the fleet changes too, not only every `watch`
        from cortex.cli.watch import EventFeed

        feed = EventFeed(url, bearer=admin_key())
        if feed.start(timeout=2.0):
            pause = feed.pause
    show(lambda: _request(url, "/admin/fleet", timeout=30.0), url=url, as_json=as_json,
         watch=watch, count=count, pause=pause)


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
    """Load a model now (placing and evicting as a request would), showing its progress."""
    from cortex.cli.watch import EventFeed, LoadProgress

    try:  # events name the profile's id, which an alias is not
        name = _request(url, f"/v1/models/{_quote(model)}", timeout=30.0)["id"]
    except (click.ClickException, KeyError, TypeError):
        name = model
    progress = LoadProgress(name)
    EventFeed(url, bearer=admin_key(), on_event=progress).start()
    try:
        reply = _model_action(url, model, "load", node)
    finally:
        progress.close()
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
    if data.get("unservable"):
        head = "unservable: no node can ever hold it"
    lines = [f"{model}: {head} ({data.get('reason') or action})"]
    if data.get("victims"):
        lines.append(f"  evict: {', '.join(data['victims'])}")
    if data.get("needs") is not None:
        lines.append(f"  needs: {gib(data['needs'])} GiB, "
                     f"free after: {gib(data.get('free_after'))} GiB")
    if action != "none":
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
    """Where a request for MODEL would go now: node, victims, expected wait. Exits 1
    when it cannot be served now, 2 when it never can (unservable)."""
    query = f"?model={_quote(model)}" + (f"&node={_quote(node)}" if node else "")
    data = _request(url, f"/admin/route{query}")
    if as_json:
        _echo_json(data)
    else:
        click.echo(explain_text(data))
    if data["action"] == "none":
        sys.exit(2 if data.get("unservable") else 1)


@main.command()
@url_option
def reload(url: str) -> None:
    """Re-read the running gateway's cortex.toml and models.toml (same as SIGHUP)."""
    reply = _request(url, "/admin/reload", method="POST", body={})
    click.echo(f"reloaded: {reply['summary']}")


main.add_command(validate)
main.add_command(chat)
main.add_command(serve)
main.add_command(config)
main.add_command(launch)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
