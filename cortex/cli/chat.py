"""`cortex chat [MODEL]`: talk to a model through the gateway, the way `ollama run` does.

Each answer streams to the terminal as it is generated. The conversation is kept for the
session (each request carries every earlier turn), in either of the gateway's dialects:
`openai` (/v1/chat/completions) or `anthropic` (/v1/messages), so one command tries both
paths a client would take. The standard library's urllib reads the stream: http.client
returns each line of a chunked body as it arrives, and the CLI needs no other client.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal

import click

from cortex.cli.remote import admin_key, url_option
from cortex.jsonhttp import HttpFailure, call_json

__all__ = ["Chat", "Turn", "chat"]

Dialect = Literal["openai", "anthropic"]
HELP = "/bye (or Ctrl-D) ends the chat, /clear forgets the conversation, /? shows this"


class Turn:
    """What one answer took: its text, tokens and timings (from the client's side)."""

    def __init__(self) -> None:
        self.text = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = time.monotonic()
        self.first: float | None = None
        self.ended: float | None = None

    def stats(self) -> str:
        ended = self.ended or time.monotonic()
        ttft = (self.first or ended) - self.started
        decoding = ended - (self.first or ended)
        rate = (self.completion_tokens - 1) / decoding \
            if self.completion_tokens > 1 and decoding > 0 else None
        return (f"{self.prompt_tokens} prompt tokens, {self.completion_tokens} tokens, "
                f"TTFT {ttft:.2f}s, " + ("-" if rate is None else f"{rate:.1f}")
                + " tokens/s")


class Chat:
    """One conversation with `model` through the gateway at `url`, in `dialect`."""

    def __init__(self, url: str, model: str, *, dialect: Dialect, key: str | None,
                 system: str | None = None, max_tokens: int = 1024,
                 timeout: float = 660.0) -> None:
        self.url, self.model, self.dialect, self.key = url.rstrip("/"), model, dialect, key
        self.system, self.max_tokens, self.timeout = system, max_tokens, timeout
        self.history: list[dict[str, str]] = []
        self.turn = Turn()

    def _request(self) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "stream": True}
        if self.dialect == "anthropic":
            if self.system:
                body["system"] = self.system
            return "/v1/messages", {**body, "messages": self.history}
        system = [{"role": "system", "content": self.system}] if self.system else []
        return "/v1/chat/completions", {**body, "messages": [*system, *self.history],
                                        "stream_options": {"include_usage": True}}

    def ask(self, text: str) -> Iterator[str]:
        """Send `text` after the conversation so far; yield the answer's pieces as they
        come, then keep both turns. `self.turn` holds the answer's numbers. A failed
        request leaves the conversation as it was."""
        self.turn = Turn()
        self.history.append({"role": "user", "content": text})
        try:
            path, body = self._request()
            for piece in self._stream(path, body):
                if self.turn.first is None:
                    self.turn.first = time.monotonic()
                self.turn.text += piece
                yield piece
        except BaseException:
            self.history.pop()
            raise
        self.turn.ended = time.monotonic()
        self.history.append({"role": "assistant", "content": self.turn.text})

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        if self.dialect == "anthropic":
            headers["anthropic-version"] = "2023-06-01"
        request = urllib.request.Request(f"{self.url}{path}", json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            reply = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise click.ClickException(f"{exc.code}: {_message(exc.read()) or exc.reason}"
                                       ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise click.ClickException(f"cannot reach the gateway at {self.url}: {reason}"
                                       ) from None
        with reply:
            for raw in reply:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                piece = self._piece(json.loads(line[6:]))
                if piece:
                    yield piece

    def _piece(self, data: dict[str, Any]) -> str | None:
        """The text a frame adds (if any); usage and errors are taken note of."""
        if "error" in data or data.get("type") == "error":
            raise click.ClickException(_message(json.dumps(data).encode()) or "stream failed")
        turn = self.turn
        if self.dialect == "anthropic":
            kind = data.get("type")
            if kind == "message_start":
                turn.prompt_tokens = data["message"]["usage"].get("input_tokens", 0)
            elif kind == "message_delta":  # the final counts (input too, when known)
                usage = data.get("usage") or {}
                turn.completion_tokens = usage.get("output_tokens", 0)
                turn.prompt_tokens = usage.get("input_tokens") or turn.prompt_tokens
            elif kind == "content_block_delta" and data["delta"].get("type") == "text_delta":
                return str(data["delta"]["text"])
            return None
        if data.get("usage"):
            turn.prompt_tokens = data["usage"]["prompt_tokens"]
            turn.completion_tokens = data["usage"]["completion_tokens"]
        choices = data.get("choices") or [{}]
        return (choices[0].get("delta") or {}).get("content")


def _message(body: bytes) -> str | None:
    """The message of an OpenAI or Anthropic error envelope."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None


def _default_model(url: str, key: str | None) -> str:
    """A loaded model if there is one, else the first the gateway lists."""
    try:
        models = call_json(url, "/v1/models", timeout=30, bearer=key)["data"]
    except HttpFailure as exc:
        raise click.ClickException(f"cannot list the models at {url}: {exc.message}") from None
    if not models:
        raise click.ClickException(f"the gateway at {url} lists no models")
    ready = [m["id"] for m in models if m.get("state") == "ready"]
    return ready[0] if ready else str(models[0]["id"])


@click.command()
@url_option
@click.option("--dialect", type=click.Choice(["openai", "anthropic"]), default="openai",
              show_default=True, help="the API to talk through")
@click.option("--system", help="a system prompt for the conversation")
@click.option("--max-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="the longest answer")
@click.option("--verbose", is_flag=True,
              help="after each answer: tokens, time to first token, tokens/s")
@click.argument("model", required=False)
def chat(url: str, dialect: Dialect, system: str | None, max_tokens: int, verbose: bool,
         model: str | None) -> None:
    """Chat with MODEL (default: a loaded model) through the gateway, streaming each answer.

    Sends $CORTEX_API_KEY (else $CORTEX_ADMIN_KEY) when set. Lines come from the terminal,
    or from a pipe one message a line.
    """
    key = os.environ.get("CORTEX_API_KEY") or admin_key() or os.environ.get("CORTEX_ADMIN_KEY")
    model = model or _default_model(url, key)
    session = Chat(url, model, dialect=dialect, key=key, system=system,
                   max_tokens=max_tokens)
    tty = sys.stdin.isatty()
    if tty:
        with contextlib.suppress(ImportError):  # line editing and history for input()
            import readline  # noqa: F401
        click.echo(f"chatting with {model} at {url} ({dialect}); {HELP}")
    while True:
        try:
            text = input(">>> " if tty else "")
        except EOFError:
            break
        except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell does
            click.echo()
            continue
        text = text.strip()
        if not text:
            continue
        if text in ("/bye", "/exit"):
            break
        if text == "/clear":
            session.history.clear()
            click.echo("conversation cleared")
            continue
        if text in ("/?", "/help"):
            click.echo(HELP)
            continue
        try:
            for piece in session.ask(text):
                click.echo(piece, nl=False)
        except KeyboardInterrupt:  # stops this answer; the conversation goes on without it
            click.echo("\n(answer stopped)")
            continue
        except click.ClickException as exc:
            if not tty:  # a script learns of it from the exit status
                raise
            click.echo(f"\nerror: {exc.message}", err=True)
            continue
        click.echo("\n")
        if verbose:
            click.echo(session.turn.stats(), err=True)
