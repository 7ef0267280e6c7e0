"""Default discovery sources: `dns` (SRV, or A/AAAA plus a port) and `file`."""

from __future__ import annotations

from collections.abc import Iterable

from cortex import DiscoverySource, hookimpl
from cortex_plugins.discovery.dns import DnsSource
from cortex_plugins.discovery.files import FileSource

__all__ = ["DnsSource", "FileSource"]


@hookimpl
def register_discovery_sources() -> Iterable[type[DiscoverySource]]:
    return [DnsSource, FileSource]
