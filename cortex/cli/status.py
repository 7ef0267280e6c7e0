"""`cortex status`: the fleet from /admin/fleet as tables with memory bars, once or live.

Rendering is a pure function of the /admin/fleet JSON, so it can be tested without a
gateway; `show` adds the loop for `--watch` (redraw in place on a terminal, one frame
after another on a pipe, one JSON document a line with `--json`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

__all__ = ["bar", "gib", "render", "show", "table"]

Fetch = Callable[[], dict[str, Any]]

_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def gib(n: float | None) -> str:
    return f"{(n or 0) / 2**30:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _can_draw(text: str) -> bool:
    """Whether stdout can encode the block characters (a C-locale pipe may not)."""
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def bar(used: float, total: float, *, width: int = 20, unicode: bool = True) -> str:
    """`[████░░░░] 42%`: the share of `total` that `used` takes."""
    share = min(1.0, max(0.0, used / total)) if total > 0 else 0.0
    filled = round(share * width)
    full, empty = ("█", "░") if unicode else ("#", ".")
    return f"[{full * filled}{empty * (width - filled)}] {share * 100:3.0f}%"


def render(fleet: dict[str, Any], *, unicode: bool = True) -> str:
    """Nodes, GPUs, models, loads and traffic, as `cortex status` prints them."""
    traffic = fleet.get("traffic") or {}
    rates = traffic.get("models") or {}
    nodes, gpus, models = [], [], []
    for node in fleet["nodes"]:
        name = node["name"]
        state = "DOWN" if not node["up"] else "draining" if node.get("draining") else "up"
        nodes.append([name, state, node["endpoint"],
                      len(node["models"]), sum(node["in_flight"].values()),
                      bar(node["reserved_bytes"], node["budget_bytes"], unicode=unicode),
                      f"{gib(node['reserved_bytes'])}/{gib(node['budget_bytes'])} GiB"])
        for gpu in node["gpus"]:
            util = gpu.get("utilization")
            gpus.append([f"{name}:{gpu['index']}", gpu["name"],
                         bar(gpu["memory_used"], gpu["memory_total"], unicode=unicode),
                         f"{gib(gpu['memory_used'])}/{gib(gpu['memory_total'])} GiB",
                         "-" if util is None else f"{util}%"])
        if not node["gpus"]:
            kind = {True: "CPU only: the budget is system RAM", None: "not reported yet"}
            gpus.append([name, kind.get(node["cpu_only"], "no GPUs reported"), "", "", ""])
        for m in node["models"]:
            rate = rates.get(m["id"], {}).get("output_tokens_per_second")
            models.append([m["id"], name, m["state"], m.get("n_ctx", 0),
                           f"{gib((m.get('estimate') or {}).get('total'))} GiB",
                           m.get("in_flight", 0), m.get("queued", 0),
                           "-" if rate is None else f"{rate:.1f}"])
    parts = [table(["NODE", "STATE", "ENDPOINT", "MODELS", "IN-FLIGHT", "RESERVED", ""],
                    nodes),
             table(["GPU", "NAME", "MEMORY USED", "", "UTIL"], gpus)]
    if models:
        parts.append(table(["MODEL", "NODE", "STATE", "N_CTX", "MEMORY", "IN-FLIGHT",
                             "QUEUED", "TOK/S"], models))
    else:
        parts.append("no models loaded")
    tail = [f"loading {load['model']} on {load['node']} for {load['seconds']:.1f}s "
            f"({load['waiters']} waiting)" for load in fleet.get("loads", [])]
    if traffic:
        tail.append(f"traffic (last {traffic['window_seconds']:.0f}s): "
                    f"{traffic['requests_per_second']:.2f} req/s, "
                    f"{traffic['output_tokens_per_second']:.1f} tokens/s out, "
                    f"{traffic['input_tokens_per_second']:.1f} tokens/s in; since start: "
                    f"{traffic['requests_total']} requests, "
                    f"{traffic['output_tokens_total']} tokens out")
    if tail:
        parts.append("\n".join(tail))
    return "\n\n".join(parts)


def _frame(fetch: Fetch, *, as_json: bool, unicode: bool) -> str:
    fleet = fetch()
    if as_json:
        return json.dumps(fleet, indent=2)
    return render(fleet, unicode=unicode)


def show(fetch: Fetch, *, url: str, as_json: bool, watch: float | None,
         count: int | None, pause: Callable[[float], None] = time.sleep) -> None:
    """Print the fleet once, or every `watch` seconds until Ctrl-C or `count` frames.

    While watching, a gateway that stops answering is shown as an error frame and asked
    again, rather than ending the watch.
    """
    unicode = _can_draw("█░")
    if watch is None:
        click.echo(_frame(fetch, as_json=as_json, unicode=unicode))
        return
    tty = sys.stdout.isatty()
    shown = 0
    try:
        while count is None or shown < count:
            if shown:  # `pause` may end early: cortex.cli.watch wakes it on fleet events
                pause(watch)
            try:
                fleet = fetch()
                # With --json, one compact document a line (JSON Lines).
                body = json.dumps(fleet) if as_json else render(fleet, unicode=unicode)
            except click.ClickException as exc:
                if as_json:
                    body = json.dumps({"error": exc.message})
                else:
                    body = f"error: {exc.message} (retrying)"
            shown += 1
            if as_json:
                click.echo(body)
                continue
            head = (f"cortex status  {url}  {time.strftime('%H:%M:%S')}  "
                    f"every {watch:g}s, Ctrl-C to stop")
            frame = f"{head}\n\n{body}"
            if tty:  # redraw in place: home, each line cleared to its end, rest cleared
                lines = frame.split("\n")
                click.echo(_HOME + "\n".join(line + _CLEAR_LINE for line in lines)
                           + _CLEAR_BELOW, nl=False)
                click.echo()
            else:
                click.echo(frame + "\n")
    except KeyboardInterrupt:
        if tty and not as_json:
            click.echo()
