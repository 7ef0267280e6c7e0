"""Gateway overhead side by side: direct, nginx, a bare pass-through, cortex, LiteLLM.

    sh bench/gateway.sh                 # the full run (~15 min), tables + PNG plots
    sh bench/gateway.sh --short         # seconds per target; .ci/run runs this
    sh bench/gateway.sh --docs          # full run, plots written into docs/img/
    sh bench/gateway.sh --only bare-hypercorn,cortex-hypercorn,cortex-info   # a subset

Every target proxies the same synthetic neuron (cortex_plugins/synthetic.py, served by
uvicorn so the backend is never the bottleneck), all run at once, and each round
visits every target in turn, so drift on a noisy 2-core box hits all of them alike.
Figures are medians of per-round values; "added" is a target's value minus direct's
in the same round. wrk (C) drives plain requests, because a Python load generator
saturates first on 2 cores; an aiohttp client (bench/sse_load.py, its own process)
drives SSE, because wrk cannot time frames inside a response. Gateway CPU comes from
/proc (utime + stime of the target's process tree), which is far steadier than
wall time here. Output: a JSON file and a markdown report in bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
LITELLM = ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"
KEY = "sk-bench"

# Synthetic profiles: `rate` tokens/s per stream (0 = as fast as it can).
PROFILES = {
    "fast": "synthetic:rate=0,tokens=16",   # plain requests: a 16-token reply at once
    "pace5": "synthetic:rate=200",          # 5 ms between tokens: one stream
    "pace50": "synthetic:rate=20",          # 50 ms: 64 streams (1,280 chunks/s)
    "pace200": "synthetic:rate=5",          # 200 ms: 256 streams (1,280 chunks/s)
    "slow": "synthetic:rate=4",             # 250 ms: 1,000 open streams for memory
}


@dataclass
class Plan:
    rounds: int
    wrk_seconds: float
    concurrency: list[int]
    # (streams, profile, tokens per stream, tokens of a shorter run): CPU per chunk is
    # the difference between the two runs over the difference in chunks, so what a
    # stream costs to open and close is not spread over its chunks.
    streams: list[tuple[int, str, int, int]]
    memory_streams: int
    memory_tokens: int


FULL = Plan(rounds=3, wrk_seconds=5, concurrency=[1, 8, 64],
            streams=[(1, "pace5", 200, 20), (64, "pace50", 60, 10), (256, "pace200", 30, 5)],
            memory_streams=1000, memory_tokens=40)
SHORT = Plan(rounds=1, wrk_seconds=1, concurrency=[1, 64],
             streams=[(1, "pace5", 20, 5), (8, "pace50", 10, 3)],
             memory_streams=50, memory_tokens=8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- processes ---------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of `pids`, from schedstat (nanoseconds, where /proc's
    utime and stime count 10 ms ticks)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Target:
    name: str
    port: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proxy: bool = True  # False for the backend itself
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)

    def start(self, logs: Path) -> None:
        log = open(logs / f"{self.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=log, stderr=log,
                                        env={**os.environ, **self.env},
                                        start_new_session=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def post(url: str, body: dict[str, Any], timeout: float = 10.0) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "content-type": "application/json", "authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_ready(target: Target, logs: Path, timeout: float = 180.0) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "ready?"}]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert target.process is not None
        if target.process.poll() is not None:
            raise SystemExit(f"{target.name} exited; see {logs / (target.name + '.log')}")
        if post(target.url, body, timeout=5) == 200:
            return
        time.sleep(0.3)
    raise SystemExit(f"{target.name} not ready in {timeout:.0f}s; see {logs}")


# --- configuration files -----------------------------------------------------------------

def neuron_toml(port: int) -> str:
    models = "".join(
        f'\n[[preload]]\nid = "{name}"\nsource = "{source}"\nharness = "synthetic"\n'
        f"slots = 2048\nn_ctx = 8192\n" for name, source in PROFILES.items())
    return f'listen = "127.0.0.1:{port}"\nname = "bench"\nmemory_headroom = 0\n{models}'


def cortex_toml(port: int, metrics: int, neuron: int) -> str:
    models = "".join(
        f'\n[[models]]\nid = "{name}"\nsource = "{source}"\nharness = "synthetic"\n'
        f"slots = 2048\nn_ctx = 8192\n" for name, source in PROFILES.items())
    return textwrap.dedent(f"""\
        [gateway]
        listen = "127.0.0.1:{port}"
        metrics_listen = "127.0.0.1:{metrics}"
        queue_limit = 4096

        [auth]
        api_keys = ["{KEY}"]

        [[neurons]]
        name = "bench"
        endpoint = "http://127.0.0.1:{neuron}"
        """) + models


def nginx_conf(port: int, neuron: int, workdir: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {workdir}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\ndaemon off;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/nginx-error.log warn;\n"
            "events { worker_connections 8192; }\nhttp {\n    access_log off;\n" + temp +
            f"    upstream neuron {{ server 127.0.0.1:{neuron}; keepalive 512; }}\n"
            f"    server {{\n        listen 127.0.0.1:{port};\n"
            "        location / {\n            proxy_pass http://neuron;\n"
            "            proxy_http_version 1.1;\n"
            '            proxy_set_header Connection "";\n'
            "            proxy_buffering off;\n        }\n    }\n}\n")


def litellm_yaml(neuron: int) -> str:
    models = "".join(
        f"  - model_name: {name}\n    litellm_params:\n      model: openai/{name}\n"
        f"      api_base: http://127.0.0.1:{neuron}/v1\n      api_key: none\n"
        for name in PROFILES)
    return f"model_list:\n{models}general_settings:\n  master_key: {KEY}\n"


def targets(workdir: Path, *, litellm: bool) -> tuple[Target, list[Target]]:
    neuron_port = free_port()
    (workdir / "neuron.toml").write_text(neuron_toml(neuron_port))
    backend = Target("direct", neuron_port, [
        str(VENV / "uvicorn"), "--factory", "cortex_neuron.asgi:neuron", "--host", "127.0.0.1",
        "--port", str(neuron_port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--backlog", "4096"],
        env={"NEURON_CONFIG": str(workdir / "neuron.toml")}, proxy=False)
    upstream = f"http://127.0.0.1:{neuron_port}"
    made: list[Target] = []

    def cortex_config() -> dict[str, str]:
        port = free_port()
        path = workdir / f"cortex-{port}.toml"
        path.write_text(cortex_toml(port, free_port(), neuron_port))
        return {"CORTEX_CONFIG": str(path), "port": str(port)}

    def server(name: str, app: str, factory: bool, env: dict[str, str], kind: str) -> None:
        port = int(env.pop("port")) if "port" in env else free_port()
        host = ["--host", "127.0.0.1", "--port", str(port)]
        flag = ["--factory"] if factory else []
        if kind == "hypercorn":
            # In this process (no supervisor) on uvloop: what `cortex serve` does.
            command = [str(VENV / "hypercorn"), app, "-b", f"127.0.0.1:{port}",
                       "--workers", "0", "-k", "uvloop", "--backlog", "4096"]
        elif kind == "uvicorn":
            command = [str(VENV / "uvicorn"), *flag, app, *host, "--loop", "uvloop",
                       "--http", "httptools", "--no-access-log", "--log-level", "warning",
                       "--backlog", "4096"]
        else:
            command = [str(VENV / "granian"), "--interface", "asgi", *flag, app, *host,
                       "--workers", "1", "--no-access-log", "--log-level", "warning",
                       "--backlog", "4096"]
        made.append(Target(name, port, command, env))

    nginx_port = free_port()
    (workdir / "nginx.conf").write_text(nginx_conf(nginx_port, neuron_port, workdir))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / kind).mkdir(exist_ok=True)
    made.append(Target("nginx", nginx_port, [
        shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(workdir / "nginx.conf"),
        "-p", str(workdir), "-e", str(workdir / "nginx-error.log")]))
    for kind in ("hypercorn", "uvicorn", "granian"):
        server(f"bare-{kind}", "bench.passthrough:app", False, {"BENCH_UPSTREAM": upstream},
               kind)
    # cortex serve itself (hypercorn, as shipped), then the same app under the others.
    # At warning (no line per request, like the other servers' access logs off), and at
    # info, `cortex serve`'s default, which logs one line per request (to a file here);
    # cortex-info runs only when --only names it (docs/benchmarks.md, "The request log").
    for name, level in (("cortex-hypercorn", "warning"), ("cortex-info", "info")):
        config = cortex_config()
        made.append(Target(name, int(config["port"]), [
            str(VENV / "cortex"), "--log-level", level, "serve", "--config",
            config["CORTEX_CONFIG"]]))
    for kind in ("uvicorn", "granian"):
        server(f"cortex-{kind}", "cortex.asgi:gateway", True, cortex_config(), kind)
    if litellm:
        (workdir / "litellm.yaml").write_text(litellm_yaml(neuron_port))
        port = free_port()
        made.append(Target("litellm", port, [
            str(LITELLM), "--config", str(workdir / "litellm.yaml"), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1", "--telemetry", "False"],
            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}))
    return backend, made


# --- measurements ------------------------------------------------------------------------

WRK_SCRIPT = f"""\
wrk.method = "POST"
wrk.body = '{{"model":"fast","messages":[{{"role":"user","content":"how fast is it"}}]}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(target: Target, concurrency: int, seconds: float, script: Path) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(script), target.url]
    before = cpu_seconds(target.pids())
    output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    cpu = cpu_seconds(target.pids()) - before
    line = next((x for x in output.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result for {target.name}:\n{output}")
    result: dict[str, Any] = json.loads(line[7:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu_us_per_request"] = cpu * 1e6 / max(1, result["requests"])
    return result


def sse(target: Target, streams: int, model: str, tokens: int, *,
        ramp: float = 0.0, sample: Callable[[], None] | None = None,
        timeout: float = 300.0) -> dict[str, Any]:
    command = [str(VENV / "python"), str(ROOT / "bench" / "sse_load.py"), target.url,
               "--model", model, "--streams", str(streams), "--tokens", str(tokens),
               "--key", KEY, "--ramp", str(ramp), "--timeout", str(timeout)]
    before = cpu_seconds(target.pids())
    # Into a file, not a pipe: thousands of gaps overflow a pipe the loop below never reads.
    with tempfile.TemporaryFile("w+") as output:
        client = subprocess.Popen(command, stdout=output, text=True)
        while client.poll() is None:
            if sample is not None:
                sample()
            time.sleep(0.25)
        cpu = cpu_seconds(target.pids()) - before
        output.seek(0)
        result: dict[str, Any] = json.loads(output.read())
    result["cpu_seconds"] = cpu
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


@contextlib.contextmanager
def running(all_targets: list[Target], logs: Path) -> Iterator[None]:
    try:
        for target in all_targets:
            target.start(logs)
        for target in all_targets:
            wait_ready(target, logs)
        yield
    finally:
        for target in reversed(all_targets):
            target.stop()


def measure(plan: Plan, backend: Target, proxies: list[Target], workdir: Path,
            log: Callable[[str], None]) -> dict[str, Any]:
    script = workdir / "chat.lua"
    script.write_text(WRK_SCRIPT)
    everyone = [backend, *proxies]
    # Idle as started (one readiness request served): before any load touched the heap.
    fresh = {target.name: rss_bytes(target.pids()) for target in proxies}
    rounds: list[dict[str, Any]] = []
    for target in everyone:  # warm-up: connections, caches, lazy imports
        wrk(target, 8, 1, script)
        sse(target, 2, "pace5", 5)
    for number in range(plan.rounds):
        log(f"round {number + 1}/{plan.rounds}")
        plain: dict[str, dict[int, dict[str, Any]]] = {}
        streamed: dict[str, dict[int, dict[str, Any]]] = {}
        for concurrency in plan.concurrency:
            for target in everyone:
                plain.setdefault(target.name, {})[concurrency] = wrk(
                    target, concurrency, plan.wrk_seconds, script)
        for streams, model, tokens, fewer in plan.streams:
            for target in everyone:
                ramp = min(1.0, streams / 100)
                short = sse(target, streams, model, fewer, ramp=ramp)
                result = sse(target, streams, model, tokens, ramp=ramp)
                chunks = result["frames"] - short["frames"]
                marginal = (result["cpu_seconds"] - short["cpu_seconds"]) * 1e6 / max(1, chunks)
                streamed.setdefault(target.name, {})[streams] = {
                    "ttft_p50_ms": pct(result["ttft"], 50), "ttft_p99_ms": pct(result["ttft"], 99),
                    "gap_p50_ms": pct(result["gaps"], 50), "gap_p99_ms": pct(result["gaps"], 99),
                    "cpu_us_per_chunk": marginal,
                    "cpu_us_per_stream": (short["cpu_seconds"] * 1e6
                                          - marginal * short["frames"]) / streams,
                    "frames": result["frames"] + short["frames"],
                    "expected": streams * (tokens + fewer),
                    "incomplete": result["incomplete"] + short["incomplete"],
                    "errors": result["errors"] + short["errors"]}
        rounds.append({"plain": plain, "streamed": streamed})
    memory: dict[str, dict[str, float]] = {}
    log(f"memory: {plan.memory_streams} open streams per target")
    for target in proxies:
        time.sleep(1.0)
        idle = rss_bytes(target.pids())
        peak = [idle]

        def sample(target: Target = target, peak: list[int] = peak) -> None:
            peak.append(rss_bytes(target.pids()))

        result = sse(target, plan.memory_streams, "slow", plan.memory_tokens,
                     ramp=min(2.0, plan.memory_streams / 500), sample=sample)
        memory[target.name] = {
            "fresh_mib": fresh[target.name] / 2**20,
            "idle_mib": idle / 2**20, "peak_mib": max(peak) / 2**20,
            "kib_per_stream": (max(peak) - idle) / 1024 / plan.memory_streams,
            "incomplete": result["incomplete"], "errors": result["errors"]}
    return {"rounds": rounds, "memory": memory}


# --- report ------------------------------------------------------------------------------

def summarise(raw: dict[str, Any], plan: Plan, names: list[str]) -> dict[str, Any]:
    rounds = raw["rounds"]
    summary: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {"plain": {}, "streamed": {}}
        for c in plan.concurrency:
            per = [r["plain"][name][c] for r in rounds]
            direct = [r["plain"]["direct"][c] for r in rounds]
            row["plain"][c] = {
                "p50_ms": median([p["p50_us"] / 1000 for p in per]),
                "p99_ms": median([p["p99_us"] / 1000 for p in per]),
                "added_p50_ms": median([(p["p50_us"] - d["p50_us"]) / 1000
                                        for p, d in zip(per, direct, strict=True)]),
                "added_p99_ms": median([(p["p99_us"] - d["p99_us"]) / 1000
                                        for p, d in zip(per, direct, strict=True)]),
                "rps": median([p["rps"] for p in per]),
                "cpu_us_per_request": median([p["cpu_us_per_request"] for p in per]),
                "failed": sum(p["errors"] + p["non2xx"] for p in per)}
        for streams, *_ in plan.streams:
            per = [r["streamed"][name][streams] for r in rounds]
            direct = [r["streamed"]["direct"][streams] for r in rounds]
            row["streamed"][streams] = {
                "ttft_p50_ms": median([p["ttft_p50_ms"] for p in per]),
                "added_ttft_ms": median([p["ttft_p50_ms"] - d["ttft_p50_ms"]
                                         for p, d in zip(per, direct, strict=True)]),
                "gap_p50_ms": median([p["gap_p50_ms"] for p in per]),
                "gap_p99_ms": median([p["gap_p99_ms"] for p in per]),
                "cpu_us_per_chunk": median([p["cpu_us_per_chunk"] for p in per]),
                "cpu_us_per_stream": median([p["cpu_us_per_stream"] for p in per]),
                "lost": sum(p["expected"] - p["frames"] for p in per),
                "failed": sum(p["incomplete"] + p["errors"] for p in per)}
        row["memory"] = raw["memory"].get(name)
        summary[name] = row
    return summary


def goals(summary: dict[str, Any], plan: Plan) -> list[tuple[str, str, bool]]:
    if "cortex-hypercorn" not in summary or "bare-hypercorn" not in summary:
        return []  # --only left out what the goals compare
    cortex, bare = summary["cortex-hypercorn"], summary["bare-hypercorn"]
    c1, top = 1, max(plan.concurrency)
    checks: list[tuple[str, str, bool]] = []

    def check(goal: str, value: float, limit: float, fmt: str, *, most: bool = True) -> None:
        met = value <= limit if most else value >= limit
        checks.append((goal, fmt.format(value), met))

    check("added p50 at c=1 ≤ 0.5 ms", cortex["plain"][c1]["added_p50_ms"], 0.5, "{:.2f} ms")
    check("added p99 at c=1 ≤ 1.5 ms", cortex["plain"][c1]["added_p99_ms"], 1.5, "{:.2f} ms")
    check(f"requests/s at c={top} ≥ 1,000", cortex["plain"][top]["rps"], 1000, "{:,.0f}",
          most=False)
    check("features cost ≤ 30% of the bare pass-through's req/s",
          1 - cortex["plain"][top]["rps"] / bare["plain"][top]["rps"], 0.30, "{:.0%}")
    streams = max(s for s, *_ in plan.streams)
    check(f"CPU per forwarded chunk ≤ 30 µs ({streams} streams)",
          cortex["streamed"][streams]["cpu_us_per_chunk"], 30, "{:.1f} µs")
    memory = cortex["memory"]
    check("idle RSS ≤ 60 MiB (as started)", memory["fresh_mib"], 60, "{:.1f} MiB")
    check(f"RSS per open stream ≤ 48 KiB ({plan.memory_streams} streams)",
          memory["kib_per_stream"], 48, "{:.1f} KiB")
    if "litellm" in summary:
        lite = summary["litellm"]
        check("added p50 ≤ 1/20 of LiteLLM's",
              cortex["plain"][c1]["added_p50_ms"] / lite["plain"][c1]["added_p50_ms"],
              1 / 20, "{:.3f}x")
        check("requests/s ≥ 15x LiteLLM's",
              cortex["plain"][top]["rps"] / max(1e-9, lite["plain"][top]["rps"]), 15,
              "{:.1f}x", most=False)
    return checks


def markdown(summary: dict[str, Any], plan: Plan, checks: list[tuple[str, str, bool]],
             machine: str) -> str:
    out = [f"Machine: {machine}. {plan.rounds} interleaved rounds; medians of per-round "
           "values.\n"]
    top = max(plan.concurrency)
    out.append(f"| target | c=1 p50 | c=1 p99 | added p50 | added p99 | req/s c={top} | "
               f"CPU µs/req c={top} | failed |")
    out.append("|---|---|---|---|---|---|---|---|")
    for name, row in summary.items():
        one, many = row["plain"][1], row["plain"][top]
        added = "—" if name == "direct" else f"{one['added_p50_ms']:.2f} ms"
        added99 = "—" if name == "direct" else f"{one['added_p99_ms']:.2f} ms"
        failed = sum(row["plain"][c]["failed"] for c in plan.concurrency)
        out.append(f"| {name} | {one['p50_ms']:.2f} ms | {one['p99_ms']:.2f} ms | {added} | "
                   f"{added99} | {many['rps']:,.0f} | {many['cpu_us_per_request']:.0f} | "
                   f"{failed} |")
    out.append("")
    out.append("| streams | target | TTFT p50 | added TTFT | gap p50 | gap p99 | "
               "CPU µs per chunk | CPU µs per stream | lost frames | failed streams |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for streams, *_ in plan.streams:
        for name, row in summary.items():
            x = row["streamed"][streams]
            added = "—" if name == "direct" else f"{x['added_ttft_ms']:+.2f} ms"
            out.append(f"| {streams} | {name} | {x['ttft_p50_ms']:.2f} ms | {added} | "
                       f"{x['gap_p50_ms']:.1f} ms | {x['gap_p99_ms']:.1f} ms | "
                       f"{x['cpu_us_per_chunk']:.0f} | {x['cpu_us_per_stream']:.0f} | "
                       f"{x['lost']} | {x['failed']} |")
    out.append("")
    out.append(f"| target | idle RSS, started | idle RSS, after the rounds | "
               f"RSS at {plan.memory_streams} streams | KiB per stream | failed streams |")
    out.append("|---|---|---|---|---|---|")
    for name, row in summary.items():
        m = row["memory"]
        if m is not None:
            out.append(f"| {name} | {m['fresh_mib']:.1f} MiB | {m['idle_mib']:.1f} MiB | "
                       f"{m['peak_mib']:.1f} MiB | "
                       f"{m['kib_per_stream']:.1f} | {m['incomplete'] + m['errors']} |")
    out.append("")
    out.append("| goal (cortex serve, hypercorn; auth, routing and metrics on) | measured | |")
    out.append("|---|---|---|")
    for goal, value, met in checks:
        out.append(f"| {goal} | {value} | {'met' if met else 'missed'} |")
    return "\n".join(out) + "\n"


Series = dict[str, tuple[list[int], list[float]]]


def _figure(path: Path, xlabel: str, panels: list[tuple[str, str, Series]],
            names: list[str]) -> Path:
    """One PNG of side-by-side log-log panels, one line per target, each target in the
    same colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(11, 4.2))
    for axis, (title, unit, lines) in zip(axes, panels, strict=True):
        for name, (xs, ys) in lines.items():
            axis.plot(xs, ys, marker="o", label=name, color=f"C{names.index(name)}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def plots(summary: dict[str, Any], plan: Plan, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cs, counts, names = plan.concurrency, [s for s, *_ in plan.streams], list(summary)

    def lines(kind: str, xs: list[int], key: str, *, proxies_only: bool = False) -> Series:
        return {name: (xs, [row[kind][x][key] for x in xs]) for name, row in summary.items()
                if not (proxies_only and name == "direct")}

    return [
        _figure(directory / "gateway-plain.png", "concurrent connections", [
            ("latency p50 (non-streamed)", "ms", lines("plain", cs, "p50_ms")),
            ("requests/s (non-streamed)", "req/s", lines("plain", cs, "rps"))], names),
        _figure(directory / "gateway-streamed.png", "concurrent streams", [
            ("TTFT p50 (streamed)", "ms", lines("streamed", counts, "ttft_p50_ms")),
            ("proxy CPU per forwarded chunk", "µs",
             lines("streamed", counts, "cpu_us_per_chunk", proxies_only=True))], names),
    ]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"


def sanity(summary: dict[str, Any]) -> list[str]:
    """What must hold for every target but the peer: nothing failed, nothing lost."""
    problems = []
    for name, row in summary.items():
        if name == "litellm":
            continue
        for c, p in row["plain"].items():
            if p["failed"]:
                problems.append(f"{name}: {p['failed']} failed requests at c={c}")
        for s, p in row["streamed"].items():
            if p["failed"] or p["lost"]:
                problems.append(f"{name}: {p['failed']} failed streams, {p['lost']} lost "
                                f"frames at {s} streams")
        m = row["memory"]
        if m is not None and (m["incomplete"] or m["errors"]):
            problems.append(f"{name}: {m['incomplete'] + m['errors']} failed slow streams")
    return problems


def profile(target: Target, workdir: Path, out: Path, seconds: int,
            log: Callable[[str], None]) -> None:
    """py-spy over one target under load: plain requests at c=64, then 64 streams."""
    script = workdir / "chat.lua"
    script.write_text(WRK_SCRIPT)
    wrk(target, 8, 1, script)
    pid = target.pids()[-1]  # the worker, where a server has a supervisor
    for kind in ("plain", "streamed"):
        flame = out / f"profile-{target.name}-{kind}.svg"
        raw = out / f"profile-{target.name}-{kind}.txt"
        spy = [str(VENV / "py-spy"), "record", "-p", str(pid), "-r", "250",
               "-d", str(seconds), "--nonblocking"]
        svg = subprocess.Popen([*spy, "-o", str(flame)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        txt = subprocess.Popen([*spy, "-f", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1)
        if kind == "plain":
            wrk(target, 64, seconds - 2, script)
        else:
            sse(target, 64, "pace50", int((seconds - 2) * 20), ramp=1.0)
        svg.wait()
        txt.wait()
        log(f"{kind}: {flame}")
        print(f"\n## {target.name}, {kind}: top functions by own samples")
        for line in top_functions(raw):
            print(line)


def top_functions(raw: Path, limit: int = 25) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                  if " (" in f else f for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    rows = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    return [f"{n / total:6.1%} own {inclusive[f] / total:6.1%} incl  {f}" for f, n in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="a quick smoke run")
    parser.add_argument("--docs", action="store_true", help="write the plots into docs/img")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM peer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--profile", metavar="TARGET",
                        help="py-spy one target (e.g. cortex-hypercorn) instead of the run")
    parser.add_argument("--seconds", type=int, default=15, help="--profile: per phase")
    parser.add_argument("--only", metavar="NAMES",
                        help="comma-separated targets to run beside direct (e.g. "
                             "bare-hypercorn,cortex-hypercorn,cortex-info)")
    args = parser.parse_args()
    plan = SHORT if args.short else FULL
    if shutil.which("wrk") is None or not (shutil.which("nginx") or
                                           Path("/usr/sbin/nginx").exists()):
        print("bench/gateway.py needs wrk and nginx: sh bench/gateway.sh installs them",
              file=sys.stderr)
        return 2
    litellm = not args.no_litellm
    if litellm and not LITELLM.exists():
        print("LiteLLM is not installed in bench/.venv-litellm: run sh bench/gateway.sh",
              file=sys.stderr)
        return 2
    # A SIGTERM unwinds like ^C, so every target is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp:
        workdir = Path(tmp)
        backend, proxies = targets(workdir, litellm=litellm)
        if args.only:
            wanted = args.only.split(",")
            unknown = set(wanted) - {t.name for t in proxies}
            if unknown:
                print(f"no target {', '.join(sorted(unknown))}", file=sys.stderr)
                return 2
            proxies = [t for t in proxies if t.name in wanted]
        elif not args.profile:
            proxies = [t for t in proxies if t.name != "cortex-info"]
        if args.profile:
            chosen = [t for t in proxies if t.name == args.profile]
            if not chosen:
                print(f"no target {args.profile}", file=sys.stderr)
                return 2
            with running([backend, *chosen], workdir):
                profile(chosen[0], workdir, args.out, args.seconds, log)
            return 0
        log("starting " + ", ".join(t.name for t in [backend, *proxies]))
        try:
            with running([backend, *proxies], workdir):
                raw = measure(plan, backend, proxies, workdir, log)
        except BaseException:
            for name in sorted(os.listdir(workdir)):
                if name.endswith(".log"):
                    tail = (workdir / name).read_text(errors="replace")[-2000:]
                    print(f"--- {name}\n{tail}", file=sys.stderr)
            raise
    names = ["direct", *(t.name for t in proxies)]
    summary = summarise(raw, plan, names)
    checks = goals(summary, plan)
    report = markdown(summary, plan, checks, machine())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"gateway-{stamp}.json").write_text(json.dumps(
        {"plan": plan.__dict__, "raw": raw, "summary": summary}, indent=1, default=str))
    (args.out / "gateway.md").write_text(report)
    images = plots(summary, plan, ROOT / "docs" / "img" if args.docs else args.out)
    print(report)
    print("plots: " + ", ".join(str(p) for p in images))
    problems = sanity(summary)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
