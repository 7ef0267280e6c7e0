"""cortex_neuron: the per-host daemon that loads models and serves them to the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from cortex import NeuronConfig, Plugins

__all__ = ["create_app"]


def create_app(config: NeuronConfig | None = None, plugins: Plugins | None = None
               ) -> Starlette:
    """The neuron's ASGI app (cortex_neuron.app), for embedding it in another process:
    `cortex serve`'s embedded default runs one beside the gateway."""
    from cortex_neuron.app import create_app as build

    return build(config, plugins)
