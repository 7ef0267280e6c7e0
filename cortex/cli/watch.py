"""The gateway's event stream (GET /admin/events) for the CLI: `cortex load` draws its
progress bar from it, and `cortex status --watch` redraws when something happens rather
than only every few seconds.

The stream is read on a daemon thread with the standard library, like every other CLI
call; a gateway without the route (or a failure to read it) only costs the progress.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["EventFeed", "LoadProgress"]

#: Seconds without a byte (the gateway sends keep-alives) before the stream is dropped.
_READ_TIMEOUT = 120.0


class EventFeed:
    """Fleet events from `url`, each handed to `on_event(kind, data)` on the reader thread;
    `pause` waits for the next one (or a timeout)."""

    def __init__(self, url: str, *, bearer: str | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self._url = url.rstrip("/") + "/admin/events"
        self._headers = {"accept": "text/event-stream"}
        if bearer:
            self._headers["authorization"] = f"Bearer {bearer}"
        self._on_event = on_event
        self._opened = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="cortex-events", daemon=True)

    def start(self, timeout: float = 5.0) -> bool:
        """Start reading; True once the stream is open (then no later event is missed)."""
        self._thread.start()
        return self._opened.wait(timeout)

    def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when an event arrives meanwhile."""
        self._changed.wait(seconds)
        self._changed.clear()

    def _read(self) -> None:
        request = urllib.request.Request(self._url, headers=self._headers)
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError), \
                urllib.request.urlopen(request, timeout=_READ_TIMEOUT) as reply:
            kind = ""
            for raw in reply:
                self._opened.set()
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if self._on_event is not None:
                        self._on_event(kind, data)
                    self._changed.set()
        self._changed.set()


class LoadProgress:
    """Draws one model's load as it goes: a bar redrawn in place on a terminal, one line
    per step otherwise (a log, a pipe)."""

    def __init__(self, model: str, out: TextIO | None = None, width: int = 30) -> None:
        self.model = model
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._width = width
        self._shown: int | None = None
        self._closed = False

    def close(self) -> None:
        """The load is over (the gateway answered): draw nothing more."""
        self._closed = True
        if self._tty and self._shown is not None:
            self._out.write("\n")
            self._out.flush()
            self._shown = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self._closed or data.get("model") != self.model:
            return
        node = data.get("node", "?")
        if kind == "load_started":
            victims = data.get("victims") or []
            evicting = f", evicting {', '.join(victims)}" if victims else ""
            self._line(f"loading {self.model} on {node}{evicting}")
        elif kind == "load_progress":
            percent = round(float(data.get("progress") or 0.0) * 100)
            if percent != self._shown:
                self._shown = percent
                self._bar(node, percent)
        elif kind in ("loaded", "load_failed"):
            self.close()

    def _bar(self, node: str, percent: int) -> None:
        if not self._tty:
            self._line(f"loading {self.model} on {node}: {percent}%")
            return
        done = self._width * percent // 100
        bar = "#" * done + "." * (self._width - done)
        self._out.write(f"\r{self.model} on {node} [{bar}] {percent:3d}%")
        self._out.flush()

    def _line(self, text: str) -> None:
        if self._tty and self._shown is not None:
            self._out.write("\n")
            self._shown = None
        self._out.write(text + "\n")
        self._out.flush()
