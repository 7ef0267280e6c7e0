"""Open N concurrent SSE chat streams against one target and report what each saw.

A separate process from the orchestrator so its CPU is its own; aiohttp because it
reads each chunk as it arrives (wrk cannot time frames inside a response). Prints
one JSON object: TTFT and inter-chunk gaps in ms, frames, incomplete streams, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import aiohttp


async def _one(session: aiohttp.ClientSession, url: str, model: str, tokens: int,
               key: str, seed: int, out: dict[str, list[float] | int]) -> None:
    body = {"model": model, "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"stream number {seed}"}]}
    started = time.perf_counter()
    last = None
    content = 0
    done = False
    try:
        async with session.post(url, json=body,
                                headers={"authorization": f"Bearer {key}"}) as response:
            if response.status != 200:
                out["errors"] += 1  # type: ignore[operator]
                return
            buffer = b""
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                for frame in frames:
                    if frame == b"data: [DONE]":
                        done = True
                    elif b'"content":"' in frame and b'"content":""' not in frame:
                        content += 1
                        if last is None:
                            out["ttft"].append((now - started) * 1000)  # type: ignore[union-attr]
                        else:
                            out["gaps"].append((now - last) * 1000)  # type: ignore[union-attr]
                        last = now
    except (TimeoutError, aiohttp.ClientError):
        out["errors"] += 1  # type: ignore[operator]
        return
    out["frames"] += content  # type: ignore[operator]
    if not done or content != tokens:
        out["incomplete"] += 1  # type: ignore[operator]


async def _run(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, list[float] | int] = {"ttft": [], "gaps": [], "frames": 0,
                                         "incomplete": 0, "errors": 0}
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for n in range(args.streams):
            tasks.append(asyncio.ensure_future(
                _one(session, args.url, args.model, args.tokens, args.key, n, out)))
            if args.ramp:  # spread the starts so streams do not tick in lockstep
                await asyncio.sleep(random.uniform(0, args.ramp / args.streams))
        await asyncio.gather(*tasks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--model", required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--key", default="sk-bench")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds to spread starts")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
