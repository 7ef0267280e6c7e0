"""The gateway through Anthropic's Python SDK (`pip install anthropic`): the SDK posts to
`{base_url}/v1/messages`, which the gateway's Anthropic dialect answers.

    .venv/bin/python examples/clients/anthropic_sdk.py
    CORTEX_URL=http://gw:31313 MODEL=qwen .venv/bin/python examples/clients/anthropic_sdk.py

`model` is a cortex model id or alias (models.toml `aliases` can map Claude model
names onto local models). With `[auth] api_keys` set on the gateway, put a key in
CORTEX_API_KEY (the SDK sends it as `x-api-key`); an open gateway takes any value.
"""

from __future__ import annotations

import os

from anthropic import Anthropic

URL = os.environ.get("CORTEX_URL", "http://127.0.0.1:31313")
MODEL = os.environ.get("MODEL", "gemma3-270m")


def main() -> None:
    client = Anthropic(base_url=URL, api_key=os.environ.get("CORTEX_API_KEY", "unused"),
                       timeout=600)

    message = client.messages.create(
        model=MODEL, max_tokens=16,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Name three colours."}])
    text = "".join(block.text for block in message.content if block.type == "text")
    print("reply:", text)
    print("stop:", message.stop_reason, "usage:", message.usage.input_tokens, "in,",
          message.usage.output_tokens, "out")

    print("stream:", end=" ", flush=True)
    with client.messages.stream(
            model=MODEL, max_tokens=16,
            messages=[{"role": "user", "content": "Count to five."}]) as stream:
        for piece in stream.text_stream:
            print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
