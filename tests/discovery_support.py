"""A real DNS server for the discovery tests (Debian's dnsmasq on a loopback port, its
queries logged), and `cortex serve` over `[[discovery]]` tables with no `[[neurons]]`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from .conftest import free_port
from .serve_support import PROFILES, GatewayProcess

DOMAIN = "gpu.internal"
SRV_NAME = f"_neuron._tcp.{DOMAIN}"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0,
             log: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting until {what}\n{log()}")


class Dnsmasq:
    """dnsmasq answering for gpu.internal on 127.0.0.1:`port` from what the test says:
    SRV records and their targets' addresses in a config file (read at start: `serve`
    restarts it on the same port), A records in an --addn-hosts file (re-read on
    SIGHUP: `hosts`). Every query it answers is logged, so a test can wait until the
    gateway has asked again rather than for a time."""

    def __init__(self, tmp: Path, *, local_ttl: int = 0) -> None:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not os.access(binary, os.X_OK):
            pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base; "
                        "scripts/test_packages.sh installs it)")
        self.binary = binary
        self.tmp = tmp
        self.port = free_port()
        self.local_ttl = local_ttl
        self.conf = tmp / "dnsmasq.conf"
        self.hosts = tmp / "dnsmasq.hosts"
        self.log_path = tmp / "dnsmasq.log"
        self.errors = tmp / "dnsmasq.err"  # what it says before its log is open
        self.hosts.write_text("")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, srv: dict[str, int] | None = None) -> None:
        """(Re)start serving `srv`: {target's first label: port}, each target at 127.0.0.1."""
        self.stop()
        lines = []
        for label, port in (srv or {}).items():
            lines.append(f"srv-host={SRV_NAME},{label}.{DOMAIN},{port}")
            lines.append(f"host-record={label}.{DOMAIN},127.0.0.1")
        self.conf.write_text("\n".join(lines) + "\n")
        self._start()

    def _start(self) -> None:
        starts = self.log().count("started, version")
        with self.errors.open("ab") as errors:  # the child keeps its own copy
            self.proc = subprocess.Popen([
                self.binary, "--keep-in-foreground", f"--conf-file={self.conf}",
                "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}",
                f"--local=/{DOMAIN}/", f"--local-ttl={self.local_ttl}", "--user=root",
                "--pid-file=", "--log-queries", f"--log-facility={self.log_path}"],
                stdout=subprocess.DEVNULL, stderr=errors)
        wait_for(lambda: self.log().count("started, version") > starts, "dnsmasq started",
                 log=self.log)

    def restart(self) -> None:
        """Start again on the same port with the config file as the test left it."""
        self.stop()
        self._start()

    def set_hosts(self, addresses: dict[str, list[str]]) -> None:
        """Replace the A records ({name under gpu.internal: [addresses]}) and SIGHUP."""
        self.hosts.write_text("".join(f"{a} {name}.{DOMAIN}\n"
                                      for name, each in addresses.items() for a in each))
        assert self.proc is not None
        reads = self.log().count(f"read {self.hosts}")
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.log().count(f"read {self.hosts}") > reads,
                 "dnsmasq re-read its hosts file", log=self.log)

    def queries(self, kind: str, name: str) -> int:
        """How many `kind` (A, SRV, ...) queries for `name` it answered."""
        return self.log().count(f"query[{kind}] {name} from ")

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.errors, self.log_path)
                       if p.exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def dnsmasq(tmp: Path, **kwargs: Any) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def discovering_gateway(tmp: Path, discovery: list[dict[str, Any]],
                        profiles: list[dict[str, Any]] | None = None,
                        neurons: list[dict[str, Any]] | None = None) -> GatewayProcess:
    """`cortex serve` with the `[[discovery]]` tables `discovery` (and no `[[neurons]]`
    unless `neurons` says)."""
    config = tmp / f"cortex-{free_port()}.toml"
    config.write_bytes(msgspec.toml.encode({
        "models": profiles or PROFILES,
        "gateway": {"metrics_listen": f"127.0.0.1:{free_port()}", "poll_interval": 0.25,
                    "keepalive_interval": 0.5, "load_timeout": 30.0},
        "discovery": discovery, "neurons": neurons or [], "auth": {"open": True}}))
    return GatewayProcess(tmp, ["--config", str(config)])


def fleet(gateway: GatewayProcess) -> dict[str, Any]:
    reply = httpx.get(f"{gateway.url}/admin/fleet", timeout=10)
    reply.raise_for_status()
    fleet: dict[str, Any] = reply.json()
    return fleet


def nodes(gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in fleet(gateway)["nodes"]}
