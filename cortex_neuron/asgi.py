"""An ASGI factory, for running the neuron under a server other than hypercorn.

    NEURON_CONFIG=/etc/cortex/neuron.toml uvicorn --factory cortex_neuron.asgi:neuron

bench/gateway.py serves its synthetic backend this way (uvicorn with httptools), so
the backend is never what limits the gateways it measures.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from cortex import load_neuron_config
from cortex_neuron.app import create_app

__all__ = ["neuron"]


def neuron() -> Starlette:
    """The neuron app for the config file named by `NEURON_CONFIG` (defaults without)."""
    return create_app(load_neuron_config(os.environ.get("NEURON_CONFIG")))
