"""Picks the node for a request from a snapshot of the fleet."""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = ["RoutingStrategy"]


class RoutingStrategy:
    """Base class; plugins subclass it and return it from their register hook."""

    name: ClassVar[str]

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        """The plugin's own settings, validated when config is loaded."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()
