"""The `dns` discovery source: neurons from SRV records, or from the A/AAAA records of a
name plus a port (a Kubernetes headless Service has both).

Resolution is dnspython's (a resolver that follows the protocol, retries and TCP
fallback included, beats one written here). An answer that says there is nothing
(NXDOMAIN, no records of the type) is an empty fleet; one that cannot be had (a
timeout, SERVFAIL, a refusal) is raised, and the gateway keeps the last good set.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Annotated, Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import msgspec

from cortex import Discovered, DiscoverySource, Found

__all__ = ["DnsSource"]

_ADDRESS_TYPES = ("A", "AAAA")
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


def _nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    """"10.0.0.2", "127.0.0.1:5353" or "[::1]:5353"."""
    host, port = spec, 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = int(rest.removeprefix(":") or 53)
    elif spec.count(":") == 1:
        host, _, tail = spec.partition(":")
        port = int(tail)
    ipaddress.ip_address(host)  # a name here would need a resolver to find the resolver
    return dns.nameserver.Do53Nameserver(host, port)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class DnsSource(DiscoverySource):
    """`name` with `port`: one node per A/AAAA address, named after it (10-0-0-7, as
    Kubernetes spells pod addresses). `name` alone: its SRV records, one node per
    target, on the record's port, named after the target's first label (its full name
    when two targets share one). The next question comes at the records' TTL when that
    is sooner than `interval`."""

    name = "dns"

    class Options(DiscoverySource.Options, kw_only=True):
        name: Annotated[str, msgspec.Meta(min_length=1)]
        port: Port | None = None
        # Resolvers to ask ("IP" or "IP:PORT"); empty: the system's (/etc/resolv.conf).
        nameservers: list[str] = []
        timeout: Annotated[float, msgspec.Meta(gt=0)] = 3.0
        scheme: Literal["http", "https"] = "http"

        def __post_init__(self) -> None:
            for spec in self.nameservers:
                try:
                    _nameserver(spec)
                except ValueError:
                    raise ValueError(f"nameserver `{spec}` is not IP or IP:PORT") from None

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._resolver: dns.asyncresolver.Resolver | None = None

    @property
    def origin(self) -> str:
        return f"dns:{self.options.name}" + (f":{self.options.port}" if self.options.port
                                            else "")

    def _resolver_now(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:  # made on first use: it reads /etc/resolv.conf
            servers = self.options.nameservers
            resolver = dns.asyncresolver.Resolver(configure=not servers)
            if servers:
                resolver.nameservers = [_nameserver(s) for s in servers]
            resolver.lifetime = self.options.timeout
            self._resolver = resolver
        return self._resolver

    async def _query(self, name: str | dns.name.Name, kind: str
                     ) -> dns.resolver.Answer | None:
        """The answer, or None when DNS says there is none."""
        try:
            return await self._resolver_now().resolve(name, kind, search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None

    async def _addresses(self, name: str | dns.name.Name) -> tuple[list[str], float | None]:
        answers = await asyncio.gather(*(self._query(name, k) for k in _ADDRESS_TYPES))
        found = [a for a in answers if a is not None and a.rrset is not None]
        return ([r.address for a in found for r in a],
                min((a.rrset.ttl for a in found if a.rrset is not None), default=None))

    async def discover(self) -> Discovered:
        options = self.options
        if options.port is not None:
            addresses, ttl = await self._addresses(options.name)
            return Discovered(ttl=ttl, nodes=tuple(
                Found(name=a.replace(".", "-").replace(":", "-"),
                      endpoint=f"{options.scheme}://{_url_host(a)}:{options.port}")
                for a in sorted(set(addresses))))
        answer = await self._query(options.name, "SRV")
        if answer is None or answer.rrset is None:
            return Discovered(nodes=())
        ttls: list[float] = [answer.rrset.ttl]
        glue: dict[dns.name.Name, list[str]] = {}  # addresses sent along with the answer
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name, []).extend(r.address for r in rrset)
                ttls.append(rrset.ttl)
        targets = {(r.target, r.port) for r in answer if r.target != dns.name.root}
        firsts = [t.labels[0] for t, _ in targets if t.labels]
        nodes = []
        for target, port in sorted(targets):
            addresses = glue.get(target, [])
            if not addresses:
                addresses, ttl = await self._addresses(target)
                ttls.extend([ttl] if ttl is not None else [])
            if not addresses:
                continue  # a target without an address: not a node (yet)
            label = target.labels[0] if target.labels else b""
            name = label.decode() if firsts.count(label) == 1 \
                else target.to_text(omit_final_dot=True)
            nodes.append(Found(name=name, endpoint=(
                f"{options.scheme}://{_url_host(sorted(addresses)[0])}:{port}")))
        return Discovered(nodes=tuple(nodes), ttl=min(ttls))
