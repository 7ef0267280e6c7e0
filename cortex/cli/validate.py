"""`cortex validate NEURON_URL MODEL_SOURCE`: load a model on one neuron, run one request,
unload it, and say in the exit code which step failed.

It is the check to run before adding a profile to models.toml: it talks to the neuron
directly (no gateway, no profile file), so a failure names the neuron's own answer.
A model that was already loaded under the same id is used as it is and left loaded.

Exit codes: 0 ok, 2 usage, 3 neuron unreachable, 4 load refused or failed, 5 load timed
out, 6 inference failed, 7 inference timed out, 8 unload failed, 130 interrupted.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import click
import msgspec

from cortex.config import ModelProfile
from cortex.jsonhttp import HttpFailure, call_json

__all__ = ["EXIT_CODES", "ValidationFailed", "default_id", "validate", "validate_model"]

EXIT_CODES = {
    "unreachable": 3,
    "load_failed": 4,
    "load_timeout": 5,
    "infer_failed": 6,
    "infer_timeout": 7,
    "unload_failed": 8,
}
DEFAULT_LOAD_TIMEOUT = 3600.0
DEFAULT_INFER_TIMEOUT = 300.0


class ValidationFailed(Exception):
    """A step failed; `kind` is a key of EXIT_CODES."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


def _call(url: str, path: str, *, body: object = None, timeout: float,
          secret: str | None) -> Any:
    return call_json(url, path, body=body, timeout=timeout, bearer=secret)


def default_id(source: str) -> str:
    """`validate-<file stem>`: an id that will not collide with a production profile's."""
    name = source.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"\.gguf$", "", name, flags=re.I)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    return f"validate-{name}"


@dataclass
class Report:
    """What `validate_model` found, step by step (printed, or as JSON with --json)."""

    neuron: str
    model: str
    source: str
    node: str | None = None
    loaded_before: bool = False
    load_seconds: float | None = None
    estimate_bytes: int | None = None
    measured_bytes: int | None = None
    endpoint: str | None = None
    completion_tokens: int = 0
    infer_seconds: float | None = None
    text: str = ""
    unloaded: bool = False
    steps: list[str] = field(default_factory=list)


def _gib(n: float | None) -> str:
    return f"{(n or 0) / 2**30:.2f} GiB"


def _infer(url: str, status: dict[str, Any], profile: ModelProfile, *, prompt: str,
           max_tokens: int, timeout: float, secret: str | None, report: Report) -> None:
    body: dict[str, Any]
    if status.get("embeddings"):
        path, body = "/v1/embeddings", {"model": profile.id, "input": prompt}
    elif status.get("chat"):
        path, body = "/v1/chat/completions", {
            "model": profile.id, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    else:
        path, body = "/v1/completions", {"model": profile.id, "prompt": prompt,
                                         "max_tokens": max_tokens, "temperature": 0}
    report.endpoint = path
    started = time.monotonic()
    try:
        reply = _call(url, path, body=body, timeout=timeout, secret=secret)
    except HttpFailure as exc:
        if exc.timed_out:
            raise ValidationFailed("infer_timeout", f"{path}: {exc.message} (--infer-timeout "
                                   "or NEURON_INFER_TIMEOUT)") from None
        raise ValidationFailed("infer_failed", f"{path}: {exc.message}") from None
    report.infer_seconds = time.monotonic() - started
    if path == "/v1/embeddings":
        vectors = [d.get("embedding") for d in reply.get("data") or []]
        if not vectors or not vectors[0]:
            raise ValidationFailed("infer_failed", f"{path}: the answer has no embedding")
        report.text = f"{len(vectors[0])} dimensions"
        return
    choices = reply.get("choices") or []
    report.completion_tokens = int((reply.get("usage") or {}).get("completion_tokens") or 0)
    if not choices or report.completion_tokens < 1:
        raise ValidationFailed("infer_failed", f"{path}: the answer has no generated tokens")
    first = choices[0]
    report.text = (first.get("message") or {}).get("content") or first.get("text") or ""


def validate_model(url: str, profile: ModelProfile, *, load_timeout: float,
                   infer_timeout: float, secret: str | None = None, prompt: str = "Hello",
                   max_tokens: int = 16, keep: bool = False) -> Report:
    """Load `profile` on the neuron at `url`, run one request, unload it (unless `keep`
    or it was loaded before). Raises ValidationFailed at the first failing step; the model
    is still unloaded, forcibly, after a failed request."""
    report = Report(neuron=url, model=profile.id, source=profile.source)
    try:
        health = _call(url, "/health", timeout=min(30.0, infer_timeout), secret=secret)
        report.node = health.get("node")
        held = _call(url, "/models", timeout=min(30.0, infer_timeout), secret=secret)
    except HttpFailure as exc:
        raise ValidationFailed("unreachable", f"neuron {url}: {exc.message}") from None
    report.loaded_before = any(m.get("id") == profile.id for m in held.get("models") or [])
    report.steps.append(f"neuron {url}: node {report.node}"
                        + (f" (already holds {profile.id}: it stays loaded)"
                           if report.loaded_before else ""))
    try:
        status = _call(url, "/models/load", timeout=load_timeout, secret=secret,
                       body={"profile": msgspec.to_builtins(profile), "wait": True})
    except HttpFailure as exc:
        if exc.timed_out:
            raise ValidationFailed(
                "load_timeout", f"load: {profile.id} was not ready within {load_timeout:g}s "
                "(--load-timeout or NEURON_LOAD_TIMEOUT); the neuron may still be loading it, "
                f"and keeps it until POST {url.rstrip('/')}/models/unload") from None
        kind = "unreachable" if exc.unreachable else "load_failed"
        raise ValidationFailed(kind, f"load: {exc.message}") from None
    report.load_seconds = status.get("load_seconds")
    report.estimate_bytes = (status.get("estimate") or {}).get("total")
    report.measured_bytes = status.get("measured_bytes")
    report.steps.append(f"load: {profile.id} from {profile.source} ready in "
                        f"{report.load_seconds or 0:.1f}s (estimate "
                        f"{_gib(report.estimate_bytes)}, measured {_gib(report.measured_bytes)})")
    failed = True
    try:
        _infer(url, status, profile, prompt=prompt, max_tokens=max_tokens,
               timeout=infer_timeout, secret=secret, report=report)
        failed = False
        rate = (f", {report.completion_tokens / report.infer_seconds:.1f} tokens/s"
                if report.completion_tokens and report.infer_seconds else "")
        report.steps.append(f"{report.endpoint}: {report.completion_tokens} tokens in "
                            f"{report.infer_seconds or 0:.2f}s{rate}: {report.text!r}")
    finally:
        if not keep and not report.loaded_before:
            try:
                _call(url, "/models/unload", timeout=infer_timeout, secret=secret,
                      body={"model": profile.id, "force": failed})
                report.unloaded = True
                report.steps.append("unload: done")
            except HttpFailure as exc:
                if not failed:  # a failed request's error matters more than this one
                    raise ValidationFailed("unload_failed", f"unload: {exc.message}") from None
    return report


def _profile(source: str, model_id: str | None, chat_format: str | None, n_ctx: int | None,
             harness: str | None) -> ModelProfile:
    from cortex.defaults import BUNDLED_GEMMA

    if source == "bundled":
        profile = BUNDLED_GEMMA
    else:
        profile = ModelProfile(id=model_id or default_id(source), source=source)
    changes: dict[str, Any] = {}
    if model_id:
        changes["id"] = model_id
    if chat_format:
        changes["chat_format"] = chat_format
    if n_ctx:
        changes["n_ctx"] = n_ctx
    if harness:
        changes["harness"] = harness
    return msgspec.structs.replace(profile, **changes) if changes else profile


@click.command()
@click.argument("neuron_url")
@click.argument("model_source")
@click.option("--id", "model_id", help="the model id to load it under "
              "(default: validate-<file name>, or gemma3-270m for `bundled`)")
@click.option("--chat-format", help="llama.cpp's built-in chat format (gemma, chatml, ...)")
@click.option("--n-ctx", type=click.IntRange(min=1), help="context length per slot")
@click.option("--harness", help="the neuron's harness plugin (default llamacpp)")
@click.option("--secret", envvar="NEURON_SECRET",
              help="the neuron's shared secret (env NEURON_SECRET)")
@click.option("--load-timeout", type=click.FloatRange(min=0, min_open=True),
              envvar="NEURON_LOAD_TIMEOUT", default=DEFAULT_LOAD_TIMEOUT, show_default=True,
              help="seconds to wait for the load (env NEURON_LOAD_TIMEOUT)")
@click.option("--infer-timeout", type=click.FloatRange(min=0, min_open=True),
              envvar="NEURON_INFER_TIMEOUT", default=DEFAULT_INFER_TIMEOUT, show_default=True,
              help="seconds to wait for the answer (env NEURON_INFER_TIMEOUT)")
@click.option("--prompt", default="Hello", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--keep", is_flag=True, help="leave the model loaded")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def validate(neuron_url: str, model_source: str, model_id: str | None,
             chat_format: str | None, n_ctx: int | None, harness: str | None,
             secret: str | None, load_timeout: float, infer_timeout: float, prompt: str,
             max_tokens: int, keep: bool, as_json: bool) -> None:
    """Load MODEL_SOURCE on one neuron, run one request, unload it.

    MODEL_SOURCE is a neuron source (bundled:NAME, a path inside the neuron's model_dirs,
    hf://owner/repo:QUANT) or `bundled` for the bundled Gemma profile. Exit codes: 0 ok,
    3 unreachable, 4 load failed, 5 load timed out, 6 inference failed, 7 inference timed
    out, 8 unload failed.
    """
    profile = _profile(model_source, model_id, chat_format, n_ctx, harness)
    try:
        report = validate_model(neuron_url, profile, load_timeout=load_timeout,
                                infer_timeout=infer_timeout, secret=secret, prompt=prompt,
                                max_tokens=max_tokens, keep=keep)
    except ValidationFailed as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": exc.kind, "message": exc.message}))
        click.echo(f"error: {exc.message}", err=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted; {profile.id} may still be loaded on {neuron_url}", err=True)
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps({"ok": True, **{k: v for k, v in vars(report).items()
                                              if k != "steps"}}))
        return
    for step in report.steps:
        click.echo(step)
    click.echo(f"ok: {profile.id} loads and answers on {neuron_url}")
