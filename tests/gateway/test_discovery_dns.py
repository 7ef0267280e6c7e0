"""`[[discovery]] source = "dns"` against a real DNS server (dnsmasq on a loopback port):
a running `cortex serve` whose only neurons are SRV or A records follows records added,
removed and changed, drains a node that left while its stream finishes, honours the
records' TTL, keeps the last good set when the server stops answering, and does not
flap when a record does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ..conftest import NeuronProcess, free_port
from ..discovery_support import (
    DOMAIN,
    SRV_NAME,
    discovering_gateway,
    dnsmasq,
    fleet,
    nodes,
    wait_for,
)
from ..serve_support import PROFILES, synthetic_neuron

#: Streams 150 tokens at 10 a second, and only on gpu-b: a request in flight there.
SLOW = {"id": "slow", "source": "synthetic:rate=10,tokens=150", "harness": "synthetic",
        "n_ctx": 512, "slots": 2, "neurons": ["gpu-b"]}


def dns_table(nameserver: str, name: str, *, linger: float, **options: Any) -> dict[str, Any]:
    return {"source": "dns", "linger": linger,
            "options": {"name": name, "nameservers": [nameserver], "timeout": 0.5, **options}}


def seen(gateway: Any) -> dict[str, tuple[str, bool, bool, str]]:
    """Each node: (endpoint, up, leaving, origin)."""
    return {name: (n["endpoint"], n["up"], n["leaving"], n["origin"])
            for name, n in nodes(gateway).items()}


def neuron_at(tmp: Path, address: str, port: int) -> NeuronProcess:
    """A synthetic neuron on another loopback address (the whole of 127/8 is local)."""
    neuron = NeuronProcess({"memory_budget": "8GiB", "listen": f"{address}:{port}"}, tmp)
    neuron.port, neuron.url = port, f"http://{address}:{port}"
    neuron.wait_ready()
    return neuron


def test_srv_records_added_removed_and_changed_under_a_running_gateway(
        tmp_path: Path) -> None:
    neurons = [synthetic_neuron(tmp_path) for _ in range(3)]
    n1, n2, n3 = neurons
    origin = f"dns:{SRV_NAME}"
    try:
        with dnsmasq(tmp_path) as dns:
            dns.serve({"gpu-a": n1.port, "gpu-b": n2.port})
            gw = discovering_gateway(tmp_path, [dns_table(dns.nameserver, SRV_NAME,
                                                          linger=1.0, interval=0.5)],
                                     [*PROFILES, SLOW])
            try:
                wait_for(lambda: seen(gw) == {"gpu-a": (n1.url, True, False, origin),
                                              "gpu-b": (n2.url, True, False, origin)},
                         "both SRV targets joined", log=gw.log)
                body = {"model": "slow", "stream": True,
                        "messages": [{"role": "user", "content": "go on"}]}
                with httpx.Client(base_url=gw.url, timeout=60) as client, \
                        client.stream("POST", "/v1/chat/completions", json=body) as stream:
                    assert stream.status_code == 200
                    lines = stream.iter_lines()
                    assert next(line for line in lines if line.startswith("data: "))
                    # gpu-b leaves, gpu-c comes: gpu-b drains while its stream goes on.
                    dns.serve({"gpu-a": n1.port, "gpu-c": n3.port})
                    wait_for(lambda: seen(gw) == {"gpu-a": (n1.url, True, False, origin),
                                                  "gpu-b": (n2.url, True, True, origin),
                                                  "gpu-c": (n3.url, True, False, origin)},
                             "gpu-c joined and gpu-b drains", log=gw.log)
                    leaving = nodes(gw)["gpu-b"]
                    assert leaving["draining"] and leaving["in_flight"] == {"slow": 1}
                    rest = [line for line in lines if line.startswith("data: ")]
                assert rest[-1] == "data: [DONE]"
                assert '"finish_reason":"length"' in rest[-2].replace(" ", "") or \
                    '"finish_reason":"stop"' in rest[-2].replace(" ", ""), rest[-2]
                wait_for(lambda: set(nodes(gw)) == {"gpu-a", "gpu-c"},
                         "gpu-b was dropped once its stream ended", log=gw.log)
                # A changed record: gpu-a is now served by the second neuron.
                dns.serve({"gpu-a": n2.port, "gpu-c": n3.port})
                wait_for(lambda: seen(gw) == {"gpu-a": (n2.url, True, False, origin),
                                              "gpu-c": (n3.url, True, False, origin)},
                         "gpu-a moved to its new port", log=gw.log)
                # The server stops answering: the last good set stays, however long.
                failures = fleet(gw)["discovery"][0]["failures"]
                dns.stop()
                wait_for(lambda: fleet(gw)["discovery"][0]["failures"] >= failures + 4,
                         "the gateway asked a silent server four more times", log=gw.log)
                assert seen(gw) == {"gpu-a": (n2.url, True, False, origin),
                                    "gpu-c": (n3.url, True, False, origin)}
                [source] = fleet(gw)["discovery"]
                assert source["failing"] and source["nodes"] == ["gpu-a", "gpu-c"]
                assert f"discovery {origin} failed, keeping its 2 nodes" in gw.log()
            finally:
                gw.stop()
    finally:
        for neuron in neurons:
            neuron.stop()


def test_a_records_follow_the_ttl_when_it_is_sooner_than_the_interval(
        tmp_path: Path) -> None:
    """`interval` is an hour: only a gateway that honours the records' 1 s TTL sees the
    records change while the test runs."""
    port = free_port()
    first, second = neuron_at(tmp_path, "127.0.0.2", port), neuron_at(tmp_path, "127.0.0.3",
                                                                      port)
    name = f"neurons.{DOMAIN}"
    origin = f"dns:{name}:{port}"
    try:
        with dnsmasq(tmp_path, local_ttl=1) as dns:
            dns.serve()
            dns.set_hosts({"neurons": ["127.0.0.2"]})
            gw = discovering_gateway(tmp_path, [dns_table(
                dns.nameserver, name, linger=0, port=port, interval=3600)])
            try:
                wait_for(lambda: seen(gw) == {"127-0-0-2": (first.url, True, False, origin)},
                         "the first address joined", log=gw.log)
                dns.set_hosts({"neurons": ["127.0.0.2", "127.0.0.3"]})
                wait_for(lambda: seen(gw) == {
                    "127-0-0-2": (first.url, True, False, origin),
                    "127-0-0-3": (second.url, True, False, origin)},
                         "the second address joined within the TTL", log=gw.log)
                dns.set_hosts({"neurons": ["127.0.0.3"]})
                wait_for(lambda: seen(gw) == {"127-0-0-3": (second.url, True, False, origin)},
                         "the first address left within the TTL", log=gw.log)
            finally:
                gw.stop()
    finally:
        first.stop()
        second.stop()


def test_a_record_that_flaps_does_not_flap_the_fleet(tmp_path: Path) -> None:
    port = free_port()
    first, second = neuron_at(tmp_path, "127.0.0.2", port), neuron_at(tmp_path, "127.0.0.3",
                                                                      port)
    name = f"neurons.{DOMAIN}"
    both = {"127-0-0-2", "127-0-0-3"}
    try:
        with dnsmasq(tmp_path) as dns:
            dns.serve()
            dns.set_hosts({"neurons": ["127.0.0.2", "127.0.0.3"]})
            gw = discovering_gateway(tmp_path, [dns_table(
                dns.nameserver, name, linger=3600, port=port, interval=0.5)])
            try:
                wait_for(lambda: {n for n, v in nodes(gw).items() if v["up"]} == both,
                         "both addresses joined", log=gw.log)
                dns.set_hosts({"neurons": ["127.0.0.2"]})
                asked = dns.queries("A", name)
                wait_for(lambda: dns.queries("A", name) >= asked + 3,
                         "the gateway asked three more times", log=gw.log)
                [source] = fleet(gw)["discovery"]
                assert source["lingering"] == ["127-0-0-3"]
                assert {n: (v["up"], v["leaving"]) for n, v in nodes(gw).items()} == {
                    "127-0-0-2": (True, False), "127-0-0-3": (True, False)}
                dns.set_hosts({"neurons": ["127.0.0.2", "127.0.0.3"]})
                wait_for(lambda: fleet(gw)["discovery"][0]["lingering"] == [],
                         "the record came back", log=gw.log)
                assert "left the fleet" not in gw.log()
            finally:
                gw.stop()
    finally:
        first.stop()
        second.stop()
