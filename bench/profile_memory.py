"""What a profile's shape (n_ctx x slots) costs in memory: the neuron's estimate, llama.cpp's
own count (`measured_bytes`) and the resident memory of a real `neuron serve` holding the
bundled Gemma 3 270M, once loaded and after one chat request.

    .venv/bin/python bench/profile_memory.py 4096x1 32768x2 32768x4

One neuron at a time, so each row is that shape alone. Figures land in docs/neuron.md
by hand, with the date and the machine.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.batching import model_path  # noqa: E402
from tests.conftest import NeuronProcess  # noqa: E402

MIB = 2**20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def measure(model: Path, n_ctx: int, slots: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        neuron = NeuronProcess({"model_dirs": [str(model.parent)], "preload": [
            {"id": "m", "source": model.name, "n_ctx": n_ctx, "slots": slots,
             "chat_format": "gemma"}]}, Path(tmp))
        try:
            neuron.wait_ready(120)
            client = httpx.Client(base_url=neuron.url, timeout=600)
            deadline = time.monotonic() + 600
            while (models := client.get("/models").json()["models"])[0]["state"] != "ready":
                assert time.monotonic() < deadline, neuron.log()
                time.sleep(0.5)
            loaded = rss(neuron.proc.pid)
            reply = client.post("/v1/chat/completions", json={
                "model": "m", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hello " * 200}]})
            assert reply.status_code == 200, reply.text
            after = rss(neuron.proc.pid)
        finally:
            neuron.stop()
    estimate = models[0]["estimate"]
    return (f"| {n_ctx} x {slots} | {estimate['kv_cache'] / MIB:.0f} MiB | "
            f"{estimate['total'] / MIB:.0f} MiB | {models[0]['measured_bytes'] / MIB:.0f} MiB | "
            f"{loaded / MIB:.0f} MiB | {after / MIB:.0f} MiB |")


def main() -> None:
    shapes = [tuple(int(n) for n in arg.split("x")) for arg in sys.argv[1:]] or [(32768, 4)]
    model = model_path()
    print("| n_ctx x slots | KV estimate | estimate total | `measured_bytes` | RSS loaded "
          "| RSS after a request |\n|---|---|---|---|---|---|", flush=True)
    for n_ctx, slots in shapes:
        print(measure(model, n_ctx, slots), flush=True)


if __name__ == "__main__":
    main()
