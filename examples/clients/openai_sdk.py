"""The gateway through OpenAI's Python SDK: point `base_url` at it; any key will do.

    .venv/bin/python examples/clients/openai_sdk.py
    CORTEX_URL=http://gw:31313 MODEL=qwen .venv/bin/python examples/clients/openai_sdk.py

With `[auth] api_keys` set on the gateway, put a key in CORTEX_API_KEY; an open gateway
takes any value (the SDK insists on one).
"""

from __future__ import annotations

import os

from openai import OpenAI

URL = os.environ.get("CORTEX_URL", "http://127.0.0.1:31313")
MODEL = os.environ.get("MODEL", "gemma3-270m")


def main() -> None:
    # A cold model loads on the first request: allow for that in the timeout.
    client = OpenAI(base_url=f"{URL}/v1", api_key=os.environ.get("CORTEX_API_KEY", "unused"),
                    timeout=600)

    print("models:", ", ".join(m.id for m in client.models.list()))

    reply = client.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "Name three colours."}])
    print("reply:", reply.choices[0].message.content)
    print("usage:", reply.usage.total_tokens if reply.usage else None, "tokens")

    print("stream:", end=" ", flush=True)
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Count to five."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
