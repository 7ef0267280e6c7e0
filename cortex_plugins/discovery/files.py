"""The `file` discovery source: neurons listed in a TOML or JSON file that another tool
keeps (consul-template, Ansible, a cron job), re-read when it changes.

    [[neurons]]                     # TOML; JSON: the same list, or {"neurons": [...]}
    name = "gpu-a"
    endpoint = "http://10.0.0.11:13131"

A file that cannot be read or parsed (missing, half-written, a wrong key) is an
answer that cannot be had: the gateway keeps the last good set and logs why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from cortex import Discovered, DiscoverySource, Found

__all__ = ["FileSource"]


class _Neuron(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    endpoint: Annotated[str, msgspec.Meta(min_length=1)]


class _Listing(msgspec.Struct, forbid_unknown_fields=True):
    neurons: list[_Neuron] = []


def _parse(data: bytes, kind: str) -> list[_Neuron]:
    if kind == "toml":
        return msgspec.toml.decode(data, type=_Listing).neurons
    listing = msgspec.json.decode(data, type=list[_Neuron] | _Listing)
    return listing.neurons if isinstance(listing, _Listing) else listing


class FileSource(DiscoverySource):
    """`path`: the file, absolute or relative to the gateway's working directory; its
    format from `format`, else its suffix (`.json`, anything else TOML). It is looked at
    every `interval` seconds and read again when its size, time or inode changed (a
    tool that replaces it by a rename changes the inode)."""

    name = "file"

    class Options(DiscoverySource.Options, kw_only=True):
        path: Annotated[str, msgspec.Meta(min_length=1)]
        format: Literal["toml", "json"] | None = None
        interval: Annotated[float, msgspec.Meta(gt=0)] = 2.0

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._seen: tuple[int, int, int] | None = None
        self._nodes: tuple[Found, ...] = ()

    @property
    def origin(self) -> str:
        return f"file:{self.options.path}"

    def _read(self) -> tuple[Found, ...]:
        path = Path(self.options.path).expanduser()
        try:
            stat = path.stat()
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if seen == self._seen:
                return self._nodes
            data = path.read_bytes()
        except OSError as exc:
            raise OSError(f"{path}: cannot read it ({exc.strerror})") from None
        kind = self.options.format or ("json" if path.suffix == ".json" else "toml")
        try:
            neurons = _parse(data, kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        names = [n.name for n in neurons]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"{path}: neuron `{name}` is listed twice")
        self._seen, self._nodes = seen, tuple(Found(n.name, n.endpoint) for n in neurons)
        return self._nodes

    async def discover(self) -> Discovered:
        return Discovered(nodes=await asyncio.to_thread(self._read))


