"""Python function calls per plain chat request through the gateway's ASGI app: a
measure of the request path that a shared, noisy machine does not move.

CPU per request swings by hundreds of microseconds between identical runs on a busy VM;
the number of Python calls one request costs does not. This drives the app built by
`cortex.asgi:gateway` in-process (no HTTP server: hypercorn's part is left out) against
the synthetic neuron bench/gateway.py starts, counts calls under cProfile, then times the
same requests without it (that figure is only as steady as the machine).

    .venv/bin/python bench/calls.py                      # this checkout
    OTHER/.venv/bin/python bench/calls.py --root OTHER   # another (its bench/gateway.py)
    .venv/bin/python bench/calls.py --pstats out.pstats  # keep the profile to compare

docs/benchmarks.md ("The loss bisected") has what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = b'{"model":"fast","messages":[{"role":"user","content":"how fast is it"}]}'


async def request(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    """One POST /v1/chat/completions through the ASGI app; its status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": list(headers), "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 9)}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # never disconnects
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(app: Any, key: str, count: int) -> tuple[pstats.Stats, float]:
    headers = [(b"host", b"127.0.0.1:9"), (b"content-type", b"application/json"),
               (b"authorization", b"Bearer " + key.encode()),
               (b"content-length", str(len(BODY)).encode())]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise SystemExit(f"the gateway did not start: {message}")

    life = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                      "state": {}}, queue.get, lifespan_send))
    await started.wait()
    for _ in range(300):  # the fleet's first poll finds the neuron (bounded)
        if await request(app, headers) == 200:
            break
        await asyncio.sleep(0.1)
    for _ in range(200):  # warm: connections, caches
        assert await request(app, headers) == 200
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(count):
        assert await request(app, headers) == 200
    profile.disable()
    before = time.process_time()
    for _ in range(count):
        assert await request(app, headers) == 200
    cpu = time.process_time() - before
    await queue.put({"type": "lifespan.shutdown"})
    await life
    return pstats.Stats(profile), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose bench/gateway.py starts the neuron")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--pstats", type=Path, help="write the profile here")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    from bench import gateway as bench  # the checkout's own

    with tempfile.TemporaryDirectory(prefix="cortex-calls-") as tmp:
        workdir = Path(tmp)
        backend, _ = bench.targets(workdir, litellm=False)
        config = workdir / "cortex.toml"
        config.write_text(bench.cortex_toml(bench.free_port(), bench.free_port(),
                                            backend.port))
        os.environ["CORTEX_CONFIG"] = str(config)
        with bench.running([backend], workdir):
            from cortex.asgi import gateway

            stats, cpu = asyncio.run(measure(gateway(), bench.KEY, args.requests))
    calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(json.dumps({"calls_per_request": round(calls / args.requests, 1),
                      "cpu_us_per_request": round(cpu * 1e6 / args.requests, 1)}))
    if args.pstats:
        stats.dump_stats(args.pstats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
