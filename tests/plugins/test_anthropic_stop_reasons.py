"""Why a reply was cut, as the `anthropic` SDK reads it from a real `cortex serve` over a
synthetic neuron (whose `length` finishes carry the neuron's `stop_cause` as the
llama.cpp engine's do, tests/neuron/test_finish.py): a full context window is
`model_context_window_exceeded`, the client's max_tokens and the profile's cap are
`max_tokens`, whole and streamed. What Claude Code does with each: docs/clients.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from ..serve_support import PROFILES, GatewayProcess, served, synthetic_neuron

# `syn` holds 64 tokens and streams 8 unless told; `capped` stops at 5 whatever is asked.
WORDS = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp: Path = tmp_path_factory.mktemp("stop-reasons")
    neuron = synthetic_neuron(tmp)
    try:
        with served(tmp, [{"name": "n1", "endpoint": neuron.url}], profiles=PROFILES) as gw:
            yield gw
    finally:
        neuron.stop()


@pytest.mark.parametrize(("model", "max_tokens", "reason", "output"), [
    # 11 prompt tokens (the synthetic harness counts words) leave 53 of 64 for the reply.
    ("syn", 200, "model_context_window_exceeded", 53),
    ("syn", 4, "max_tokens", 4),  # the client's own limit
    ("capped", 200, "max_tokens", 5),  # the profile's cap: an output limit too
])
def test_a_full_context_is_told_apart_from_an_output_limit(
        gateway: GatewayProcess, model: str, max_tokens: int, reason: str,
        output: int) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    whole = client.messages.create(model=model, max_tokens=max_tokens, messages=WORDS)
    with client.messages.stream(model=model, max_tokens=max_tokens,
                                messages=WORDS) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert (message.stop_reason, message.usage.output_tokens) == (reason, output)
        assert message.usage.input_tokens == 11
