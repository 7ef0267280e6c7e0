"""`cortex`: the gateway's command line."""

from __future__ import annotations

import click

import cortex
from cortex.config import load_gateway_config
from cortex.errors import ConfigError

__all__ = ["main"]


@click.group()
@click.version_option(cortex.__version__, prog_name="cortex")
def main() -> None:
    """cortex: one OpenAI- and Anthropic-compatible API over a fleet of neurons."""


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate cortex.toml and the models it names; errors name file, key and reason."""
    try:
        gateway, profiles = load_gateway_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{path}: ok ({len(gateway.neurons)} neurons, {len(profiles)} models)")
