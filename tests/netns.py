"""Network namespaces for multi-host tests: each neuron on its own address, behind its own
link, so a test can cut, delay or drop one node's traffic with `ip`, `tc` and `iptables`.

Layout: a bridge in the root namespace holds 10.231.S.1/24 (S is the first /24 of
10.231.0.0/16 that nothing on this machine routes or owns); each `Host` is a namespace
whose `eth0` (10.231.S.N) is a veth paired with a bridge port. The gateway runs in the
root namespace and reaches the neurons across the bridge. Everything made here is
removed by `Network.close()`, which the fixtures call even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec

from cortex import ModelProfile

ROOT = Path(__file__).resolve().parent.parent
NEURON_PORT = 13131


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"cxprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, ns: str | None = None) -> str:
    """Run `ip ARGS` (in namespace `ns`), raising with its stderr on failure."""
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def _routed(prefix: str) -> bool:
    """Whether anything but the default route covers `prefix`, or an address is in it."""
    routes = [r for r in ip("-4", "route", "show", "table", "all", "match", prefix).splitlines()
              if r and not r.startswith("default")]
    return bool(routes) or f" {prefix.rsplit('.', 1)[0]}." in ip("-4", "-o", "addr")


class Host:
    """One namespace on the bridge: `addr` is its address, `port` its bridge-side veth."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.network, self.name = network, name
        self.netem: subprocess.Popen[bytes] | None = None
        self.ns = f"cortex-{network.subnet}-{index}-{os.getpid()}"
        self.port = f"cx{network.subnet}p{index}"
        self.addr = f"10.231.{network.subnet}.{index + 2}"
        ip("netns", "add", self.ns)
        ip("link", "add", self.port, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        ip("link", "set", self.port, "master", network.bridge, "up")
        ip("link", "set", "lo", "up", ns=self.ns)
        ip("addr", "add", f"{self.addr}/24", "dev", "eth0", ns=self.ns)
        ip("link", "set", "eth0", "up", ns=self.ns)

    def link(self, state: str) -> None:
        """`ip link set PORT down|up`: the bridge side of this host's cable."""
        ip("link", "set", self.port, state)

    def impair(self) -> str:
        """300 ms delay and 5% loss each way on this host's link. Returns what applied:
        `tc netem`; where the kernel has no netem, the same per packet from userspace
        (iptables NFQUEUE and tests/netem.py); without iptables either, a 256 kbit/s
        token bucket that queues up to 300 ms and drops beyond it (`tc tbf`)."""
        netem = ["netem", "delay", "300ms", "loss", "5%"]
        if self._qdisc(netem):
            return "tc qdisc " + " ".join(netem)
        if shutil.which("iptables"):
            return self._queue(delay=0.3, loss=0.05)
        tbf = ["tbf", "rate", "256kbit", "burst", "4kb", "latency", "300ms"]
        if self._qdisc(tbf):
            return "tc qdisc " + " ".join(tbf)
        raise RuntimeError("neither netem, iptables nor tbf is available")

    def lift(self) -> dict[str, int]:
        """Stop tests/netem.py; its counts: {"queued": packets seen, "dropped": of them}."""
        assert self.netem is not None, "impair() did not start tests/netem.py"
        self.netem.terminate()
        out, _ = self.netem.communicate(timeout=30)
        self.netem = None
        counts: dict[str, int] = msgspec.json.decode(out.splitlines()[-1])
        return counts

    def _qdisc(self, qdisc: list[str]) -> bool:
        """Put `qdisc` on both ends of the link; False when this kernel lacks it."""
        try:
            subprocess.run(["tc", "qdisc", "replace", "dev", self.port, "root", *qdisc],
                           check=True, capture_output=True, timeout=30)
        except subprocess.CalledProcessError:
            return False
        subprocess.run(["ip", "netns", "exec", self.ns, "tc", "qdisc", "replace", "dev",
                        "eth0", "root", *qdisc], check=True, capture_output=True, timeout=30)
        return True

    def _queue(self, delay: float, loss: float) -> str:
        """Queue every packet in and out of eth0 to tests/netem.py in this namespace."""
        netem = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, str(ROOT / "tests" / "netem.py"),
             "0", str(delay), str(loss)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.netem = netem
        ready, _, _ = select.select([netem.stdout], [], [], 30)
        if not ready or netem.stdout is None or netem.stdout.readline() != b"ready\n":
            netem.kill()
            _, err = netem.communicate(timeout=30)
            raise RuntimeError(f"tests/netem.py did not start: {err.decode().strip()}")
        for chain, way in (("INPUT", "-i"), ("OUTPUT", "-o")):
            subprocess.run(["ip", "netns", "exec", self.ns, "iptables", "-A", chain, way,
                            "eth0", "-j", "NFQUEUE", "--queue-num", "0"],
                           check=True, capture_output=True, timeout=30)
        return f"iptables NFQUEUE + tests/netem.py: delay {delay * 1000:.0f}ms loss {loss:.0%}"

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            for pid in ip("netns", "pids", self.ns).split():
                # Only processes the tests started live in these namespaces.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        with contextlib.suppress(RuntimeError):
            ip("netns", "del", self.ns)  # takes eth0 and so its peer with it
        with contextlib.suppress(RuntimeError):
            ip("link", "del", self.port)
        if self.netem is not None:  # killed with the namespace's other processes above
            self.netem.communicate(timeout=30)


class Network:
    """A bridge in the root namespace and the hosts on it."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []
        for subnet in range(1, 255):
            if _routed(f"10.231.{subnet}.0/24"):
                continue
            try:  # the bridge's name is the lock: a concurrent run takes another subnet
                ip("link", "add", f"cx{subnet}br", "type", "bridge", "forward_delay", "0")
            except RuntimeError:
                continue
            self.subnet, self.bridge = subnet, f"cx{subnet}br"
            break
        else:
            raise RuntimeError("no free /24 in 10.231.0.0/16")
        try:
            ip("addr", "add", f"10.231.{subnet}.1/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except RuntimeError:
            self.close()
            raise
        self.gateway_addr = f"10.231.{subnet}.1"

    def host(self, name: str) -> Host:
        try:
            host = Host(self, name, len(self.hosts))
        except RuntimeError:
            self.close()
            raise
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        with contextlib.suppress(RuntimeError):
            ip("link", "del", self.bridge)


class NsNeuron:
    """A `neuron serve` process inside `host`'s namespace, on its address."""

    def __init__(self, host: Host, config: dict[str, Any], tmp: Path) -> None:
        self.host, self.tmp = host, tmp
        self.url = f"http://{host.addr}:{NEURON_PORT}"
        self.config = {"name": host.name, "listen": f"{host.addr}:{NEURON_PORT}", **config}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = tmp / f"neuron-{host.name}.log"

    def start(self, **config: Any) -> NsNeuron:
        """Start (or, after `stop`, start again with `config` merged over the first)."""
        self.config.update(config)
        path = self.tmp / f"neuron-{self.host.name}-{self.starts}.toml"
        path.write_bytes(msgspec.toml.encode(self.config))
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns, sys.executable, "-m", "cortex_neuron.cli",
                 "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT,
                cwd=ROOT)
        return self

    def wait_ready(self, timeout: float = 60.0) -> NsNeuron:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"neuron exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"neuron did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def as_toml(model: ModelProfile) -> dict[str, Any]:
    """A profile as a TOML table (TOML has no null)."""
    return {k: v for k, v in msgspec.to_builtins(model).items() if v is not None}
