"""`neuron`: serve this host's models, show its GPUs, list what a running neuron holds, drain it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import click
import msgspec

import cortex
from cortex import NeuronConfig, Plugins, build_plugin_manager, load_neuron_config
from cortex.defaults import BUNDLED_GEMMA
from cortex.errors import ConfigError
from cortex.jsonhttp import HttpFailure, call_json
from cortex.loops import LOOPS, settle_heap
from cortex.loops import run as run_loop
from cortex.sockets import bind, cannot_listen, hypercorn_config

__all__ = ["GRACEFUL_TIMEOUT", "main", "serve_app"]

# Seconds open connections get after SIGTERM before hypercorn closes them (a Kubernetes
# terminationGracePeriodSeconds covers this plus the preStop drain).
GRACEFUL_TIMEOUT = 30


url_option = click.option("--url", envvar="NEURON_URL", default="http://127.0.0.1:13131",
                          show_default=True, help="the neuron to ask (env NEURON_URL)")


def listening(listen: str) -> socket.socket:
    """The socket to serve on, bound now: an address taken or not this host's is one
    line (ClickException) before anything starts, not hypercorn's traceback."""
    try:
        return bind(listen)
    except (OSError, ValueError) as exc:
        raise click.ClickException(cannot_listen("neuron", listen, exc)) from None


def serve_app(app: Any, listen: str, loop: str = "auto",
              sock: socket.socket | None = None) -> None:
    """Run an ASGI app under hypercorn until SIGINT or SIGTERM (on `sock` when the
    caller bound it already)."""
    from hypercorn.asyncio import serve

    hyper = hypercorn_config(sock or listening(listen), listen)
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once
    hyper.graceful_timeout = GRACEFUL_TIMEOUT

    async def run() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
        task = asyncio.ensure_future(serve(app, hyper, shutdown_trigger=stop.wait))
        logging.getLogger("cortex.neuron").info("neuron listening on %s", listen)
        await task

    settle_heap()
    run_loop(run(), loop)


def _load_config(path: str | None) -> NeuronConfig:
    try:
        return load_neuron_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(cortex.__version__, prog_name="neuron")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """The cortex neuron: runs GGUF models on this host and serves them over HTTP."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="neuron.toml (every key has a default)")
@click.option("--listen", help="host:port, overrides the config (default 0.0.0.0:13131)")
@click.option("--bundled", is_flag=True, help="load the bundled Gemma 3 270M model at start")
@click.option("--loop", type=click.Choice(LOOPS), default="auto", show_default=True,
              help="event loop: uvloop when installed (auto), or force one")
def serve(config_path: str | None, listen: str | None, bundled: bool, loop: str) -> None:
    """Serve the lifecycle and inference API."""
    from cortex_neuron.app import create_app

    config = _load_config(config_path)
    if listen:
        config = msgspec.structs.replace(config, listen=listen)
    sock = listening(config.listen)
    if bundled and all(p.id != BUNDLED_GEMMA.id for p in config.preload):
        config = msgspec.structs.replace(config, preload=[*config.preload, BUNDLED_GEMMA])
    serve_app(create_app(config, Plugins(build_plugin_manager())), config.listen, loop, sock)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def gpus(config_path: str | None, as_json: bool) -> None:
    """Show the GPUs this host reports (NVML), or that it is CPU-only, and whether the
    installed llama.cpp can offload to a GPU."""
    from cortex_neuron.hardware import Hardware, llama_gpu_offload

    config = _load_config(config_path)
    hardware = Hardware(config, build_plugin_manager().hook)
    found = hardware.gpus()
    offload = llama_gpu_offload()
    if as_json:
        click.echo(json.dumps({"cpu_only": hardware.cpu_only,
                               "budget_bytes": hardware.budget_bytes,
                               "gpu_offload": offload,
                               "gpus": msgspec.to_builtins(found)}, indent=2))
        return
    if not found:
        click.echo(f"CPU-only node; budget {hardware.budget_bytes / 2**30:.1f} GiB of system RAM")
    for gpu in found:
        click.echo(f"{gpu.index}  {gpu.name:<28} {gpu.memory_used / 2**30:6.1f} / "
                   f"{gpu.memory_total / 2**30:6.1f} GiB  util {gpu.utilization}%  "
                   f"driver {gpu.driver}")
    if found:
        click.echo(f"budget {hardware.budget_bytes / 2**30:.1f} GiB")
    click.echo({None: "llama.cpp: not installed (the `neuron` extra)",
                True: "llama.cpp: GPU offload supported",
                False: "llama.cpp: no GPU offload (a CPU build, or no device it can use)" + (
                    ": models would run on the CPU (docs/deploy.md)" if found else "")}[offload])


@main.command()
@url_option
@click.option("--wait", "wait_for", type=float, metavar="SECONDS",
              help="then wait up to SECONDS for the requests it runs to finish")
@click.option("--undo", is_flag=True, help="take new requests and loads again")
def drain(url: str, wait_for: float | None, undo: bool) -> None:
    """Stop this neuron taking new requests and loads; what it runs finishes.

    The same as `cortex drain NODE` without a gateway at hand: a Kubernetes preStop hook
    runs it in the neuron's own container ($NEURON_SECRET if the neuron has a secret).
    """
    secret = os.environ.get("NEURON_SECRET")

    def busy(status: dict[str, Any]) -> int:
        return sum(m.get("in_flight", 0) + m.get("queued", 0) for m in status["models"])

    try:
        status = call_json(url, "/drain", body={"draining": not undo}, timeout=10,
                           bearer=secret)
        if undo:
            click.echo(f"{status['node']} takes new work again")
            return
        deadline = time.monotonic() + (wait_for or 0.0)
        while wait_for is not None and busy(status) and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            status = call_json(url, "/status", timeout=10, bearer=secret)
    except HttpFailure as exc:
        raise click.ClickException(f"{url}: {exc.message}") from None
    if wait_for is not None and busy(status):
        raise click.ClickException(f"{status['node']} is draining, {busy(status)} request(s) "
                                   f"still in flight after {wait_for:g}s")
    click.echo(f"{status['node']} is draining, {busy(status)} request(s) in flight")


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="print the neuron's /models JSON")
def models(url: str, as_json: bool) -> None:
    """List the models a running neuron holds."""
    from cortex.cli.status import duration, table

    try:
        data = call_json(url, "/models", timeout=10, bearer=os.environ.get("NEURON_SECRET"))
    except HttpFailure as exc:
        raise click.ClickException(f"{url}: {exc.message}") from None
    rows = data.get("models", [])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models loaded")
        return
    click.echo(table(
        ["MODEL", "STATE", "N_CTX", "SLOTS", "MEMORY", "IN-FLIGHT", "QUEUED", "LOADED IN",
         "PINNED"],
        [[m["id"], m["state"], m.get("n_ctx", 0), m.get("slots", 1),
          f"{(m.get('estimate') or {}).get('total', 0) / 2**30:.2f} GiB",
          m.get("in_flight", 0), m.get("queued", 0), duration(m.get("load_seconds")),
          "yes" if m.get("pinned") else ""] for m in rows]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
