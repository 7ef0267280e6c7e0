"""The default discovery sources on their own, against a real DNS server (dnsmasq on a
loopback port) and real files: what each answer becomes, and what is raised instead of
an answer (so the gateway keeps the last good set)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from cortex import Found
from cortex_plugins.discovery import DnsSource, FileSource

from ..discovery_support import DOMAIN, SRV_NAME, dnsmasq

pytestmark = pytest.mark.anyio


def dns(**options: object) -> DnsSource:
    return DnsSource(msgspec.convert({"timeout": 0.5, **options}, DnsSource.Options))


async def test_srv_targets_named_by_first_label_unless_two_share_one(tmp_path: Path) -> None:
    with dnsmasq(tmp_path, local_ttl=7) as server:
        server.serve({"gpu-a": 13001, "gpu-b": 13002})
        source = dns(name=SRV_NAME, nameservers=[server.nameserver])
        answer = await source.discover()
        assert answer.nodes == (Found("gpu-a", "http://127.0.0.1:13001"),
                                Found("gpu-b", "http://127.0.0.1:13002"))
        assert answer.ttl == 7
        # Two targets in different zones with one first label: their full names.
        server.conf.write_text(
            f"srv-host={SRV_NAME},gpu.east.{DOMAIN},13001\n"
            f"srv-host={SRV_NAME},gpu.west.{DOMAIN},13002\n"
            f"host-record=gpu.east.{DOMAIN},127.0.0.1\nhost-record=gpu.west.{DOMAIN},::1\n")
        server.restart()
        assert (await dns(name=SRV_NAME, nameservers=[server.nameserver]).discover()).nodes \
            == (Found(f"gpu.east.{DOMAIN}", "http://127.0.0.1:13001"),
                Found(f"gpu.west.{DOMAIN}", "http://[::1]:13002"))


async def test_nothing_there_is_an_empty_answer_and_a_silent_server_raises(
        tmp_path: Path) -> None:
    with dnsmasq(tmp_path) as server:
        server.serve()
        nothing = dns(name=f"nobody.{DOMAIN}", port=13131, nameservers=[server.nameserver])
        assert (await nothing.discover()).nodes == ()  # NXDOMAIN: authoritative
        assert (await dns(name=SRV_NAME, nameservers=[server.nameserver]).discover()).nodes \
            == ()
        server.stop()
        with pytest.raises(Exception):  # noqa: B017 - dnspython's, whichever it is
            await nothing.discover()


def test_a_nameserver_must_be_an_address() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"nameserver `dns\.example` is not IP"):
        dns(name="x", nameservers=["dns.example"])
    assert dns(name="x", nameservers=["[::1]:5353", "10.0.0.2"]).options.nameservers


async def test_a_file_is_read_again_only_when_it_changed_and_a_broken_one_raises(
        tmp_path: Path) -> None:
    path = tmp_path / "neurons.json"
    path.write_text('[{"name": "a", "endpoint": "http://h:1"}]')
    source = FileSource(msgspec.convert({"path": str(path)}, FileSource.Options))
    assert (await source.discover()).nodes == (Found("a", "http://h:1"),)
    path.write_text('{"neurons": [{"name": "a", "endpoint": "http://h:1"}, '
                    '{"name": "a", "endpoint": "http://h:2"}]}')
    with pytest.raises(ValueError, match="neuron `a` is listed twice"):
        await source.discover()
    path.write_text('[{"name": "b", "endpont": "http://h:1"}]')
    with pytest.raises(ValueError, match=re.escape(f"{path}: Object contains unknown field")):
        await source.discover()
    path.unlink()
    with pytest.raises(OSError, match="cannot read it"):
        await source.discover()
