"""`cortex serve` and `cortex config check`: one check of the configuration for both.

`config check` runs what `serve` runs at start (and every reload): the same
cortex.gateway.configcheck, so a file it passes starts and one it refuses is refused
with the same one-line errors. Neither prints a traceback for a mistake in the
configuration or an address that cannot be bound, unless `--log-level debug` asks.

Every flag of `serve` has an environment variable (`CORTEX_LISTEN`, ...), for units and
containers, and works with a config file and with the embedded default alike.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import click

from cortex.config import (
    GatewayConfig,
    GatewaySection,
    ModelProfile,
    NeuronConfig,
    NeuronEntry,
)
from cortex.errors import CortexError
from cortex.loops import LOOPS

__all__ = ["EMBEDDED_LISTEN", "EMBEDDED_METRICS", "EMBEDDED_NEURON", "config", "embedded_config",
           "serve"]

log = logging.getLogger("cortex.cli")

#: The embedded default serves this machine only unless told otherwise (`--listen`).
EMBEDDED_LISTEN = "127.0.0.1:31313"
EMBEDDED_METRICS = "127.0.0.1:31314"
EMBEDDED_NEURON = "127.0.0.1:13131"


def _fail(lines: list[str]) -> NoReturn:
    for line in lines:
        click.echo(f"error: {line}", err=True)
    sys.exit(1)


@contextmanager
def _one_line(what: str) -> Iterator[None]:
    """Whatever goes wrong in `what` is one line on stderr and exit status 1, with the
    traceback only under `--log-level debug` (for a bug report)."""
    from cortex.gateway.configcheck import problems_of
    from cortex.gateway.server import CannotListen

    try:
        yield
    except CortexError as exc:
        _fail(problems_of(exc))
    except CannotListen as exc:
        _fail([str(exc)])
    except click.ClickException:
        raise
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        _fail([f"{what}: {type(exc).__name__}: {exc} (--log-level debug shows where)"])


def _log_level(level: str | None) -> None:
    if level:
        logging.getLogger().setLevel(level.upper())


log_level_option = click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
    help="as before the subcommand (debug: tracebacks too)")


def embedded_config(listen: str | None, neuron_listen: str, metrics_listen: str | None = None
                    ) -> tuple[GatewayConfig, list[ModelProfile], NeuronConfig]:
    """No config: one neuron on loopback serving the bundled Gemma 3 270M, the gateway
    and its metrics on loopback too unless `listen`/`metrics_listen` say otherwise."""
    from cortex.defaults import BUNDLED_GEMMA

    section = GatewaySection(listen=listen or EMBEDDED_LISTEN,
                             metrics_listen=metrics_listen or EMBEDDED_METRICS)
    config = GatewayConfig(gateway=section, neurons=[
        NeuronEntry(name="local", endpoint=f"http://{neuron_listen}")])
    return config, [BUNDLED_GEMMA], NeuronConfig(listen=neuron_listen, name="local")


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="CORTEX_CONFIG", show_envvar=True,
              help="cortex.toml; without it, run the embedded single-host default")
@click.option("--listen", envvar="CORTEX_LISTEN", show_envvar=True,
              help="host:port for the API (replaces [gateway] listen; embedded default "
                   f"{EMBEDDED_LISTEN}, 0.0.0.0:31313 for every interface)")
@click.option("--metrics-listen", envvar="CORTEX_METRICS_LISTEN", show_envvar=True,
              help="host:port for /metrics (replaces [gateway] metrics_listen; embedded "
                   f"default {EMBEDDED_METRICS})")
@click.option("--neuron-listen", default=EMBEDDED_NEURON, show_default=True,
              envvar="CORTEX_NEURON_LISTEN", show_envvar=True,
              help="embedded mode only: where the in-process neuron listens")
@click.option("--loop", type=click.Choice(LOOPS), default="auto", show_default=True,
              help="event loop: uvloop when installed (auto), or force one")
@log_level_option
def serve(config_path: str | None, listen: str | None, metrics_listen: str | None,
          neuron_listen: str, loop: str, log_level: str | None) -> None:
    """Serve the OpenAI and Anthropic APIs for the fleet (with --config, on [gateway]
    listen, default 0.0.0.0:31313; the embedded default on 127.0.0.1:31313)."""
    _log_level(log_level)
    with _one_line("cortex serve"):
        _serve(config_path, listen, metrics_listen, neuron_listen, loop)


def _serve(config_path: str | None, listen: str | None, metrics_listen: str | None,
           neuron_listen: str, loop: str) -> None:
    from cortex.gateway import create_app
    from cortex.gateway.configcheck import Files, check, check_file
    from cortex.gateway.server import Served
    from cortex.gateway.server import serve as run
    from cortex.plugins import Plugins, build_plugin_manager

    manager = build_plugin_manager()
    plugins = Plugins(manager)
    before: list[Served] = []
    reloader: Callable[[], tuple[GatewayConfig, list[ModelProfile]]] | None = None
    if config_path is None:
        # Only this mode needs the neuron, imported here at run time, so a gateway-only
        # install still serves with --config.
        config, profiles, neuron_config = embedded_config(listen, neuron_listen,
                                                          metrics_listen)
        checked = check(config, profiles, plugins, files=Files(
            "the embedded default", "the embedded default", listen="--listen",
            metrics_listen="--metrics-listen"))
        try:
            from cortex_neuron import create_app as neuron_app

            neuron = neuron_app(neuron_config)
        except ImportError as exc:
            raise click.ClickException(
                f"the embedded default needs the neuron ({exc}): pip install 'cortex[neuron]'"
                ", or pass --config") from None
        before.append(Served(neuron, neuron_listen, name="neuron"))
    else:
        path = config_path
        checked = check_file(path, plugins, listen=listen, metrics_listen=metrics_listen)

        def reloader() -> tuple[GatewayConfig, list[ModelProfile]]:
            fresh = check_file(path, plugins, listen=listen, metrics_listen=metrics_listen)
            for warning in fresh.warnings:
                log.warning("%s", warning)
            return fresh.config, fresh.profiles

    for warning in checked.warnings:
        log.warning("%s", warning)
    config, profiles = checked.config, checked.profiles
    app = create_app(config, manager, profiles=profiles, reloader=reloader)
    run(Served(app, config.gateway.listen, name="gateway"), before=before, loop=loop)


@click.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--listen", envvar="CORTEX_LISTEN", help="as `cortex serve --listen`")
@click.option("--metrics-listen", envvar="CORTEX_METRICS_LISTEN",
              help="as `cortex serve --metrics-listen`")
@click.option("--live", is_flag=True,
              help="also ask each neuron to estimate each profile it may serve")
@log_level_option
def config_check(path: str, listen: str | None, metrics_listen: str | None, live: bool,
                 log_level: str | None) -> None:
    """Check cortex.toml, its models and keys as `cortex serve` would at start: every
    problem, one line each, naming the file, the key and the model or neuron."""
    from cortex.cli.live import estimate_all
    from cortex.gateway.configcheck import check_file
    from cortex.plugins import Plugins, build_plugin_manager

    _log_level(log_level)
    with _one_line("cortex config check"):
        checked = check_file(path, Plugins(build_plugin_manager()), listen=listen,
                             metrics_listen=metrics_listen)
        for warning in checked.warnings:
            click.echo(f"warning: {warning}", err=True)
        if live:
            _fail_or_print(estimate_all(checked.config, checked.profiles,
                                        models=checked.files.models))
        keys = checked.prepared.keys
        access = ("open to anyone (open = true)" if keys.declared_open else
                  "OPEN: no keys, and no [auth] open = true") if keys.open else "keys required"
        click.echo(f"{path}: ok ({len(checked.config.neurons)} neurons, "
                   f"{len(checked.profiles)} models, {access})")


def _fail_or_print(result: tuple[list[str], list[str]]) -> None:
    found, problems = result
    for line in found:
        click.echo(line)
    if problems:
        _fail(problems)

