"""Talking to a running gateway from the `cortex` command: where it is, the admin key,
and errors that say what to do.

`--url` and `--admin-key` are global options: given before the subcommand (`cortex
--url URL status`) or after it (`cortex status --url URL`), the nearer one wins;
`$CORTEX_URL` and `$CORTEX_ADMIN_KEY` stand in for them. The key is better in the
environment than on the command line, where `ps` shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cortex.jsonhttp import HttpFailure, call_json

__all__ = ["DEFAULT_URL", "Globals", "admin_key", "gateway_options", "request", "url_option",
           "why"]

DEFAULT_URL = "http://127.0.0.1:31313"
F = TypeVar("F", bound=Callable[..., Any])

URL_HELP = f"the gateway to talk to (default {DEFAULT_URL}; env CORTEX_URL)"
KEY_HELP = ("the gateway's admin key, when it has keys (env CORTEX_ADMIN_KEY, which `ps` "
            "does not show)")


class Globals:
    """The global options, as the group read them (flags or environment)."""

    def __init__(self, url: str | None = None, admin_key: str | None = None) -> None:
        self.url = url
        self.admin_key = admin_key


def _globals(ctx: click.Context) -> Globals:
    found = ctx.find_object(Globals)
    if found is None:
        found = ctx.ensure_object(Globals)
    return found


def _url(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    return value or _globals(ctx).url or DEFAULT_URL


def _key(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        _globals(ctx).admin_key = value


#: `--url` after a subcommand (passed to it as `url`), else the global one or CORTEX_URL.
url_option = click.option("--url", callback=_url, metavar="URL", help=URL_HELP)


def gateway_options(command: F) -> F:
    """`--url` (passed to the command as `url`) and `--admin-key` after a subcommand."""
    command = click.option("--admin-key", metavar="KEY", expose_value=False, callback=_key,
                           help=KEY_HELP)(command)
    return url_option(command)


def admin_key() -> str | None:
    """The admin key given (either place, or $CORTEX_ADMIN_KEY), if any."""
    ctx = click.get_current_context(silent=True)
    return _globals(ctx).admin_key if ctx is not None else None


def why(exc: HttpFailure, url: str) -> str:
    """What a failed call means for the person at the terminal, and what to do."""
    if exc.unreachable:
        return (f"cannot reach the gateway at {url}: {exc.message} (is it running? "
                "--url or CORTEX_URL name another)")
    if exc.status == 401:
        if admin_key():
            return (f"the gateway at {url} answered 401: it refused the admin key given "
                    "(--admin-key or CORTEX_ADMIN_KEY), which is not one of its admin keys")
        return (f"the gateway at {url} answered 401: it needs an admin key: set "
                "CORTEX_ADMIN_KEY (or pass --admin-key KEY)")
    if exc.status == 403 and admin_key() and "admin key" in exc.message:
        return (f"the gateway at {url} answered 403: the key given (--admin-key or "
                "CORTEX_ADMIN_KEY) is a client key, and /admin needs one of its admin keys")
    return exc.message


def request(url: str, path: str, *, method: str = "GET", body: object = None,
            timeout: float = 660.0) -> Any:
    """One admin API call; a failure is a ClickException that says what to do."""
    try:
        return call_json(url, path, body=body, method=method, timeout=timeout,
                         bearer=admin_key())
    except HttpFailure as exc:
        raise click.ClickException(why(exc, url)) from None
