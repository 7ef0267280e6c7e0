"""An ASGI factory, for running the gateway under a server other than hypercorn.

    CORTEX_CONFIG=/etc/cortex/cortex.toml uvicorn --factory cortex.asgi:gateway
    CORTEX_CONFIG=/etc/cortex/cortex.toml granian --interface asgi --factory cortex.asgi:gateway

`cortex serve` (hypercorn) stays the supported way: only it drains on SIGTERM, reloads
on SIGHUP and serves `metrics_listen`. The app itself is server-agnostic, so this is
all another server needs; docs/benchmarks.md compares the three.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from cortex.gateway.app import create_app
from cortex.gateway.configcheck import check_file
from cortex.plugins import Plugins, build_plugin_manager

__all__ = ["gateway"]


def gateway() -> Starlette:
    """The gateway app for the config file named by `CORTEX_CONFIG`, checked as
    `cortex serve` checks it (ConfigProblems lists what is wrong)."""
    path = os.environ.get("CORTEX_CONFIG")
    if not path:
        raise RuntimeError("set CORTEX_CONFIG to the gateway's cortex.toml")
    manager = build_plugin_manager()
    checked = check_file(path, Plugins(manager))
    return create_app(checked.config, manager, profiles=checked.profiles)
