"""The gateway: one API over a fleet of neurons (`cortex serve`).

`create_app` builds the ASGI app; cortex.gateway.server runs it under hypercorn.
Nothing in the core library (`cortex/*.py`) imports this package.
"""

from __future__ import annotations

from cortex.gateway.app import create_app
from cortex.gateway.state import Reloader

__all__ = ["Reloader", "create_app"]
