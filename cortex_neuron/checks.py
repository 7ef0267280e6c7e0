"""What the neuron says no to, and the embedding encodings it serves.

A field a client sets expects an effect: a request asking for something no harness here
does (several choices, log probabilities, an image) gets a 400 naming the field, never
a 200 that quietly ignored it (docs/compatibility.md lists what is refused).
"""

from __future__ import annotations

import base64
import math
import struct

from cortex.errors import InvalidRequest
from cortex.types import ChatCompletionRequest, CompletionRequest, SamplingFields

__all__ = ["check_chat", "check_completion", "encode_embedding"]

TEXT_PARTS = frozenset({"text", "input_text"})


def _check_sampling(body: SamplingFields) -> None:
    if body.n != 1:
        raise InvalidRequest(f"n = {body.n}: this server generates one choice per request; "
                             "send n requests instead", param="n")
    if body.logprobs not in (None, False, 0):
        raise InvalidRequest("logprobs are not supported", param="logprobs")
    if body.top_k is not None and not 0 <= body.top_k < 2**31:
        raise InvalidRequest("top_k must be from 0 (off) to 2^31 - 1", param="top_k")


def check_chat(body: ChatCompletionRequest) -> None:
    _check_sampling(body)
    if body.top_logprobs:
        raise InvalidRequest("top_logprobs are not supported", param="top_logprobs")
    for i, message in enumerate(body.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            kind = part.get("type")
            if kind not in TEXT_PARTS:
                where = f"messages[{i}].content[{j}]"
                raise InvalidRequest(f"{where}: `{kind}` content is not supported; the models "
                                     "here read text only", param=where)
            if not isinstance(part.get("text"), str):
                where = f"messages[{i}].content[{j}].text"
                raise InvalidRequest(f"{where} must be a string", param=where)


def check_completion(body: CompletionRequest) -> None:
    _check_sampling(body)
    if body.suffix:
        raise InvalidRequest("suffix (insertion) is not supported", param="suffix")
    if body.echo and not isinstance(body.prompt, str) and \
            not all(isinstance(p, str) for p in body.prompt):
        raise InvalidRequest("echo needs a text prompt, not token ids", param="echo")


def encode_embedding(vector: list[float], *, dimensions: int | None,
                     encoding: str) -> list[float] | str:
    """OpenAI's shapes: `dimensions` keeps the first ones, renormalised (as OpenAI does
    for its own models); base64 is little-endian float32."""
    if dimensions is not None:
        if not 1 <= dimensions <= len(vector):
            raise InvalidRequest(f"dimensions must be from 1 to {len(vector)} for this model",
                                 param="dimensions")
        vector = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vector = [x / norm for x in vector]
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
