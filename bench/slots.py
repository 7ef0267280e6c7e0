"""What the neuron's slot choice costs per admission (cortex_plugins/llamacpp/slots.py),
on the scheduler's thread, while every stream of the model waits for it.

Four slots holding agent conversations (a 20,000-token shared system prompt, then 10,000
tokens of their own) and a new 20,500-token prompt; `place` compares the prompt with
every slot. Side by side in one run: block-wise common_prefix (shipped) and the
token-by-token loop it replaced.

    .venv/bin/python bench/slots.py
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from cortex_plugins.llamacpp import slots


def _loop(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _median_ms(prefix: Callable[[list[int], list[int]], int], prompt: list[int],
               cached: list[list[int]], runs: int = 30) -> float:
    shipped = slots.common_prefix
    slots.common_prefix = prefix  # place() looks it up at call time
    try:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            slots.place(prompt, cached, [1, 2, 3])
            times.append(time.perf_counter() - start)
    finally:
        slots.common_prefix = shipped
    return statistics.median(times) * 1000


def main() -> None:
    rng = random.Random(7)
    system = [rng.randrange(262144) for _ in range(20_000)]
    cached = [system + [rng.randrange(262144) for _ in range(10_000)] for _ in range(4)]
    prompt = system + [rng.randrange(262144) for _ in range(500)]
    block = _median_ms(slots.common_prefix, prompt, cached)
    loop = _median_ms(_loop, prompt, cached)
    print(f"place(), 4 slots x 30,000 tokens: block-wise {block:.2f} ms, "
          f"token loop {loop:.2f} ms, ratio {block / loop:.2f}")


if __name__ == "__main__":
    main()
