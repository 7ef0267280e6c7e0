"""`cortex status`: the fleet from /admin/fleet as tables with memory bars, once or live.

Rendering is a pure function of the /admin/fleet JSON, so it can be tested without a
gateway; `show` adds the loop for `--watch` (redraw in place on a terminal, one frame
after another on a pipe, one JSON document a line with `--json`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

__all__ = ["bar", "duration", "gib", "render", "show", "table", "terminal_width"]

Fetch = Callable[[], dict[str, Any]]

_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def gib(n: float | None) -> str:
    return f"{(n or 0) / 2**30:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
          width: int | None = None, optional: Sequence[str] = (),
          elastic: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell. Within `width`, the `optional` headers' columns
    go first (in that order), then the widest of the `elastic` columns is cut short
    (in the middle, marked `~`, down to 8 characters) until the table fits, then every
    line is."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    keep = list(range(len(headers)))
    widths = [max(len(row[i]) for row in cells) for i in keep]

    def span() -> int:
        return sum(widths[i] for i in keep) + 2 * (len(keep) - 1)

    if width is not None:
        for name in optional:
            if span() <= width:
                break
            keep = [i for i in keep if headers[i] != name]
        while span() > width:
            shrinkable = [i for i in elastic if i in keep and widths[i] > 8]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    lines = []
    for row in cells:
        line = "  ".join(_middle(row[i], widths[i]).ljust(widths[i]) for i in keep).rstrip()
        lines.append(line if width is None else _cut(line, width))
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


def _middle(text: str, width: int) -> str:
    """Cut from the middle: a name's end (`:1`, `-q4_k_m`) tells rows apart too."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[:width - 1 - tail] + "~" + text[len(text) - tail:]


def duration(seconds: float | None) -> str:
    """`42s`, `4m10s`, `2h05m`: short enough for a column."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


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


def _until(model: dict[str, Any]) -> str:
    """When the TTL unloads the model if it stays idle: `pinned`, `-` without a TTL (it
    stays until its room is needed), else the time left."""
    if model.get("pinned"):
        return "pinned"
    return duration(model.get("expires_in"))


def _idle(model: dict[str, Any]) -> str:
    if model.get("in_flight") or model.get("queued") or model["state"] != "ready":
        return "-"
    return duration(model.get("idle_seconds"))


def render(fleet: dict[str, Any], *, unicode: bool = True, width: int | None = None) -> str:
    """Nodes, GPUs, models, loads and traffic, as `cortex status` prints them; within
    `width` columns when given (narrower bars, then fewer columns, then cut names)."""
    traffic = fleet.get("traffic") or {}
    rates = traffic.get("models") or {}
    cells = 20 if width is None or width >= 120 else 10  # bar width
    nodes, gpus, models, down = [], [], [], []
    for node in fleet["nodes"]:
        name = node["name"]
        state = "DOWN" if not node["up"] else "draining" if node.get("draining") else "up"
        if not node["up"]:
            down.append(f"{name} is down: {node.get('last_error') or 'not polled yet'}")
        nodes.append([name, state, node["endpoint"],
                      len(node["models"]), sum(node["in_flight"].values()),
                      bar(node["reserved_bytes"], node["budget_bytes"], width=cells,
                          unicode=unicode),
                      f"{gib(node['reserved_bytes'])}/{gib(node['budget_bytes'])} GiB"])
        for gpu in node["gpus"]:
            util = gpu.get("utilization")
            gpus.append([f"{name}:{gpu['index']}", gpu["name"],
                         bar(gpu["memory_used"], gpu["memory_total"], width=cells,
                             unicode=unicode),
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
                           "-" if rate is None else f"{rate:.1f}", _idle(m), _until(m)])
    node_table = table(["NODE", "STATE", "ENDPOINT", "MODELS", "IN-FLIGHT", "RESERVED", ""],
                       nodes, width=width, optional=["ENDPOINT", "MODELS"], elastic=[0])
    if down:
        node_table += "\n" + "\n".join(line if width is None else _cut(line, width)
                                       for line in down)
    parts = [node_table,
             table(["GPU", "NAME", "MEMORY USED", "", "UTIL"], gpus, width=width,
                   elastic=[0, 1])]
    if models:
        parts.append(table(["MODEL", "NODE", "STATE", "N_CTX", "MEMORY", "IN-FLIGHT",
                            "QUEUED", "TOK/S", "IDLE", "UNTIL"], models, width=width,
                           optional=["N_CTX", "QUEUED", "MEMORY"], elastic=[0, 1]))
    else:
        parts.append("no models loaded")
    tail = [f"loading {load['model']} on {load['node']} for {load['seconds']:.1f}s "
            f"({load['waiters']} waiting)" for load in fleet.get("loads", [])]
    if traffic:
        tail.append(f"traffic (last {traffic['window_seconds']:.0f}s): "
                    f"{traffic['requests_per_second']:.2f} req/s, "
                    f"{traffic['output_tokens_per_second']:.1f} tokens/s out, "
                    f"{traffic['input_tokens_per_second']:.1f} tokens/s in")
        tail.append(f"since start: {traffic['requests_total']} requests, "
                    f"{traffic['output_tokens_total']} tokens out")
    if tail:
        parts.append("\n".join(line if width is None else _cut(line, width)
                               for line in tail))
    return "\n\n".join(parts)


def terminal_width() -> int | None:
    """Columns to fit: $COLUMNS, else the terminal's; never under 80. None through a pipe
    without $COLUMNS (nothing wraps there)."""
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        return None
    return max(80, shutil.get_terminal_size().columns)


def _frame(fetch: Fetch, *, as_json: bool, unicode: bool) -> str:
    fleet = fetch()
    if as_json:
        return json.dumps(fleet, indent=2)
    return render(fleet, unicode=unicode, width=terminal_width())


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
                body = json.dumps(fleet) if as_json else render(
                    fleet, unicode=unicode, width=terminal_width())
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
