"""`cortex launch claude|codex`: start an installed agent CLI pointed at this gateway.

Each client is found on PATH and exec'd with the user's extra arguments, its settings
given as environment variables and command-line overrides only: nothing is written to
the user's config files, so a plain `claude` or `codex` afterwards is unchanged.

- Claude Code speaks the Anthropic dialect: ANTHROPIC_BASE_URL is the gateway (no /v1),
  the key goes as ANTHROPIC_AUTH_TOKEN (a Bearer token) with ANTHROPIC_API_KEY emptied:
  it is usually a real Anthropic key, which Claude Code would send along as `x-api-key`
  (tests/cli/test_launch.py sees it do so). Without `--model` the
  names it asks for reach whatever the gateway maps them to (the bundled profile's
  `claude-*`); with one, every model setting it reads names that model.
- Codex speaks only the OpenAI Responses API: a `cortex` model provider with
  `wire_api = "responses"` and the model are given with `-c` (without `--model`, the
  gateway's first model, since Codex's own default names an OpenAI one).

The key is CORTEX_API_KEY where set; an open gateway takes any. The gateway is asked
for its models first, so one that is down, or refuses the key, is said so at once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import click
import msgspec

from cortex.cli.remote import url_option
from cortex.jsonhttp import HttpFailure, call_json

__all__ = ["Launch", "claude_launch", "codex_launch", "launch"]

DEFAULT_URL = "http://127.0.0.1:31313"
# The npm package each client comes from, for the hint when it is missing.
PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex"}
NAMES = {"claude": "Claude Code", "codex": "Codex"}
_OPEN_KEY = "cortex"  # what is sent to a gateway without keys, which takes any


class Launch(msgspec.Struct, frozen=True, kw_only=True):
    """What runs: the client's arguments after its name, and the environment it gets
    on top of the caller's (an empty value sets the variable empty)."""

    argv: list[str]
    env: dict[str, str]


def claude_launch(url: str, key: str, model: str | None, args: Sequence[str]) -> Launch:
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": key, "ANTHROPIC_API_KEY": "",
           # No telemetry, update or feature-flag calls to Anthropic's servers.
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    if model is not None:
        for name in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
                     "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                     "CLAUDE_CODE_SUBAGENT_MODEL"):
            env[name] = model
    return Launch(argv=list(args), env=env)


def codex_launch(url: str, key: str, model: str, args: Sequence[str]) -> Launch:
    provider = (f'model_providers.cortex={{name="cortex", base_url={_toml(url + "/v1")}, '
                f'wire_api="responses", env_key="CORTEX_API_KEY"}}')
    # `-c` given before a subcommand applies to it too (`codex exec`); `-m` would not.
    return Launch(argv=["-c", "model_provider=cortex", "-c", provider,
                        "-c", f"model={_toml(model)}", *args], env={"CORTEX_API_KEY": key})


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these characters)."""
    return msgspec.json.encode(text).decode()


def _models(url: str, key: str) -> list[str]:
    """The gateway's model ids, asked with the key the client will send: a gateway that
    is down or refuses the key is said so here, not in the client's retries."""
    try:
        data = call_json(url, "/v1/models", timeout=10.0, bearer=key)["data"]
    except HttpFailure as exc:
        where = " (start it with `cortex serve`)" if exc.unreachable else ""
        raise click.ClickException(f"the gateway at {url}{where}: {exc.message}") from None
    return [str(item["id"]) for item in data]


@click.command(context_settings={"ignore_unknown_options": True})
@url_option  # after the subcommand, or `cortex --url URL launch ...`
@click.option("--model", help="the model the client asks for (Claude Code: every model "
                              "setting; Codex: default the gateway's first model)")
@click.argument("client", type=click.Choice(sorted(PACKAGES)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def launch(url: str, model: str | None, client: str, args: tuple[str, ...]) -> None:
    """Start Claude Code or Codex pointed at the gateway. Other ARGS go to the client, in
    order (`cortex launch claude -p "hello"`); after `--`, all of them."""
    path = shutil.which(client)
    if path is None:
        raise click.ClickException(
            f"{NAMES[client]} is not installed (no `{client}` on PATH): install it with "
            f"`npm install -g {PACKAGES[client]}`, then run this again")
    url = url.rstrip("/")
    key = os.environ.get("CORTEX_API_KEY") or _OPEN_KEY
    models = _models(url, key)
    if client == "claude":
        run = claude_launch(url, key, model, args)
    elif model is None and not models:
        raise click.ClickException(f"the gateway at {url} serves no model")
    else:
        run = codex_launch(url, key, model or models[0], args)
    os.execve(path, [path, *run.argv], {**os.environ, **run.env})
