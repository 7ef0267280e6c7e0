"""`cortex.asgi:gateway`, the ASGI factory's documented name (cortex.gateway.asgi).

Kept where ASGI servers' command lines already point; the one module of the core that
names the gateway package, and only when a server calls the factory.
"""

from __future__ import annotations

from starlette.applications import Starlette

__all__ = ["gateway"]


def gateway() -> Starlette:
    """The gateway app for the config file named by `CORTEX_CONFIG`."""
    from cortex.gateway.asgi import gateway as build

    return build()
