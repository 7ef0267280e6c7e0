"""The llama.cpp engine below HTTP, over the real bundled model: a step whose
llama_decode fails ends only the sequence that caused it, and a prompt far over the
context is refused without being tokenized whole.

Nothing is faked. The engine refuses out-of-vocabulary token ids before they are queued
(tests/test_poison.py), so the decode tests hand a Sequence to the Scheduler directly,
past that check: llama.cpp itself then fails the whole batch it shares with a running
stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cortex import Admitted, Done, ModelProfile, ResolvedModel, TextDelta
from cortex.errors import InvalidRequest

pytestmark = [pytest.mark.model, pytest.mark.anyio]


@pytest.fixture(scope="module")
def engine(gemma_path: Path) -> Iterator[Any]:
    from cortex_plugins.llamacpp import LlamaCppHarness

    harness = LlamaCppHarness(LlamaCppHarness.Options())
    profile = ModelProfile(id="sched", source=str(gemma_path), chat_format="gemma",
                           n_ctx=256, slots=2, n_batch=64)
    resolved = ResolvedModel(files=[str(gemma_path)], total_bytes=gemma_path.stat().st_size,
                             origin="test")
    loaded = harness.load(profile, resolved, lambda fraction: None)
    yield loaded
    asyncio.run(loaded.close())


class _Sampling:
    """Greedy, no stops, no grammar: what engine.Sampling resolves a plain request to."""

    temperature = 0.0
    top_p = 1.0
    top_k = 40
    min_p = 0.0
    repeat_penalty = 1.0
    presence_penalty = 0.0
    frequency_penalty = 0.0
    seed = None
    stop: list[str] = []
    grammar = None

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.ignore_eos = True


async def _events(engine: Any, prompt: list[int], max_tokens: int) -> AsyncIterator[Any]:
    from cortex_plugins.llamacpp.batch import END, Sequence

    queue: asyncio.Queue[Any] = asyncio.Queue()
    seq = Sequence(prompt, _Sampling(max_tokens), asyncio.get_running_loop(), queue)
    engine._scheduler.submit(seq)
    try:
        while (event := await queue.get()) is not END:
            yield event
    finally:
        seq.cancel.set()


async def test_a_failed_decode_ends_only_the_sequence_that_caused_it(engine: Any) -> None:
    prompt = engine._tokens("Count to twenty: one, two, three,", True)
    bystander = _events(engine, prompt, 48)
    admitted = await anext(bystander)  # it holds a slot: its prompt's counts come first
    assert isinstance(admitted, Admitted) and admitted.prompt_tokens == len(prompt)
    first = await anext(bystander)  # it is generating now
    assert isinstance(first, TextDelta)
    seen: list[Any] = [first]

    async def finish() -> None:
        seen.extend([event async for event in bystander])

    running = asyncio.ensure_future(finish())
    # Its prefill joins the bystander's next step; llama_decode refuses that whole batch.
    bad = [event async for event in _events(engine, [2, 262144, 5], 4)]
    await asyncio.wait_for(running, 120)
    done = seen[-1]
    assert isinstance(done, Done), seen[-3:]
    assert done.finish_reason == "length" and done.completion_tokens == 48
    assert all(isinstance(e, TextDelta) for e in seen[:-1])
    assert len(bad) == 2 and isinstance(bad[0], Admitted), bad
    assert isinstance(bad[1], InvalidRequest), bad
    assert "llama_decode" in bad[1].message and bad[1].status == 400
    assert engine._scheduler.isolated >= 1  # it did share a failed step


async def test_the_context_serves_on_after_a_failed_decode(engine: Any) -> None:
    bad = [e async for e in _events(engine, [2, -1], 2)]
    assert isinstance(bad[-1], InvalidRequest)
    prompt = engine._tokens("The capital of France is", True)
    events = [e async for e in _events(engine, prompt, 4)]
    assert isinstance(events[-1], Done) and events[-1].completion_tokens == 4


def test_a_prompt_far_over_the_context_is_not_tokenized_whole(engine: Any) -> None:
    """The model's tokenizer is wrapped only to see what it is given (it still runs)."""
    from cortex.errors import ContextLengthExceeded

    given: list[int] = []
    tokenize = engine._model.tokenize

    def recording(text: bytes, add_bos: bool, special: bool) -> list[int]:
        given.append(len(text))
        result: list[int] = tokenize(text, add_bos, special)
        return result

    engine._model.tokenize = recording
    try:
        huge = "lorem ipsum dolor sit amet " * 200_000  # 5.4 MB, about a million tokens
        with pytest.raises(ContextLengthExceeded) as refused:
            engine._tokens(huge, True)
        assert max(given) <= 256 * 48  # n_ctx times Gemma's longest token text
        assert refused.value.prompt_tokens > 500_000  # estimated from the head
        assert "prompt is too long:" in refused.value.message
        given.clear()
        assert len(engine._tokens("lorem ipsum " * 10, True)) < 256  # short: whole
        assert given == [len("lorem ipsum " * 10)]
    finally:
        del engine._model.tokenize


async def test_truncate_history_keeps_the_latest_turns_that_fit(engine: Any) -> None:
    """A conversation over the 256-token context is refused, unless the request says
    `truncate_history` (what the Ollama dialect asks): then it keeps the system prompt
    and the most recent turns that fit, found here independently, one tail at a time,
    by tokenizing each as the /tokenize route would."""
    import msgspec

    from cortex import ChatCompletionRequest, ChatMessage, TokenizeRequest
    from cortex.errors import ContextLengthExceeded

    messages = [ChatMessage(role="system", content="Answer in one word.")]
    for turn in range(8):
        messages += [ChatMessage(role="user", content=f"Question {turn}: " + "why " * 12),
                     ChatMessage(role="assistant", content=f"Because {turn}. " * 4)]
    messages.append(ChatMessage(role="user", content="And the sky?"))
    request = ChatCompletionRequest(model="sched", messages=messages, max_tokens=2,
                                    temperature=0.0)
    with pytest.raises(ContextLengthExceeded):
        [event async for event in engine.chat(request)]
    events = [event async for event in engine.chat(
        msgspec.structs.replace(request, truncate_history=True))]
    done = events[-1]
    assert isinstance(done, Done)

    async def count(kept: list[ChatMessage]) -> int:
        return len(await engine.tokenize(TokenizeRequest(model="sched", messages=kept)))

    starts = [i for i, m in enumerate(messages) if m.role == "user"][1:]
    tails = [[messages[0], *messages[i:]] for i in starts]
    fitting = [n for n in [await count(tail) for tail in tails] if n < 256]
    assert done.prompt_tokens == fitting[0] and fitting[0] > 256 // 2
    alone = [messages[0], ChatMessage(role="user", content="why " * 400)]
    with pytest.raises(ContextLengthExceeded):  # the last turn alone cannot fit
        [event async for event in engine.chat(msgspec.structs.replace(
            request, messages=alone, truncate_history=True))]
