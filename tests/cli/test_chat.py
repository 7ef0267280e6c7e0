"""`cortex chat`: the real CLI in a subprocess, its input piped, through a real gateway to
a synthetic neuron (a token stream, no model), in both dialects. What the gateway saw
of each turn comes from its request records (the observers' request_finished)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, reset, running_gateway, wait_until
from ..serve_support import synthetic_neuron

pytestmark = pytest.mark.anyio

SYN = ModelProfile(id="syn", source="synthetic:rate=0,tokens=12", harness="synthetic",
                   n_ctx=2048)
OTHER = ModelProfile(id="other", source="synthetic:rate=0,tokens=5", harness="synthetic",
                     n_ctx=2048)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    neuron = synthetic_neuron(tmp_path_factory.mktemp("chat"), name="a")
    try:
        yield neuron
    finally:
        neuron.stop()


async def chat(gw: RunningGateway, lines: list[str], *args: str,
               env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", "chat", "--url", gw.url, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(
        process.communicate("".join(f"{line}\n" for line in lines).encode()), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_chat_streams_each_answer_and_keeps_the_conversation(
        synthetic: NeuronProcess, dialect: str) -> None:
    async with running_gateway([("a", synthetic)], [SYN]) as gw:
        code, out, err = await chat(
            gw, ["Hello there", "", "/clear", "Hello there", "Tell me more", "/bye",
                 "never sent"], "--dialect", dialect, "--verbose", "--max-tokens", "12", "syn")
        assert code == 0, err
        records = gw.recorder.records
        assert len(records) == 3  # the blank line, /clear and the line after /bye send nothing
        assert all(r.dialect == dialect and r.stream and r.status == 200 for r in records)
        first, again, second = records
        # /clear forgot the first turn: the same question costs the same prompt again.
        assert again.prompt_tokens == first.prompt_tokens
        # The next turn carries the question and answer before it.
        assert second.prompt_tokens > again.prompt_tokens + again.completion_tokens
        answers = [line for line in out.splitlines() if line.strip()]
        assert "conversation cleared" in answers
        texts = [a for a in answers if a != "conversation cleared"]
        assert len(texts) == 3 and all(len(a.split()) >= 3 for a in texts)
        assert texts[0] == texts[1]  # same prompt, same synthetic words
        stats = err.splitlines()
        assert len(stats) == 3
        assert stats[2].startswith(f"{second.prompt_tokens} prompt tokens, "
                                   f"{second.completion_tokens} tokens, TTFT ")


async def test_chat_without_a_model_uses_a_loaded_one_and_reports_errors(
        synthetic: NeuronProcess) -> None:
    reset(synthetic)
    async with running_gateway([("a", synthetic)], [SYN, OTHER]) as gw:
        assert (await gw.client.post("/admin/models/other/load")).status_code == 200
        code, out, err = await chat(gw, ["Hi"])
        assert code == 0, err
        (record,) = gw.recorder.records
        assert record.model == "other" and out.strip()

        code, out, err = await chat(gw, ["Hi"], "no-such-model")
        assert code == 1
        assert "404" in err and "no-such-model" in err and "Traceback" not in err


async def test_chat_sends_the_api_key_from_the_environment(
        synthetic: NeuronProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_API_KEYS", "chat-client-key")
    async with running_gateway([("a", synthetic)], [SYN]) as gw:
        code, _, err = await chat(gw, ["Hi"], "syn", env={"CORTEX_API_KEY": ""})
        assert code == 1 and "401" in err
        code, out, err = await chat(gw, ["Hi"], "syn",
                                    env={"CORTEX_API_KEY": "chat-client-key"})
        assert code == 0 and out.strip(), err


SLOW = ModelProfile(id="slow", source="synthetic:rate=20,tokens=2000", harness="synthetic",
                    n_ctx=4096)


async def test_in_a_terminal_it_prompts_and_ctrl_c_stops_only_the_answer(
        synthetic: NeuronProcess) -> None:
    """On a terminal (a pty here): the banner and `>>> ` prompts; Ctrl-C (SIGINT) during a
    long answer stops that answer and the chat goes on; `/bye` ends it."""
    import pty
    import signal

    async with running_gateway([("a", synthetic)], [SYN, SLOW]) as gw:
        leader, follower = pty.openpty()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cortex.cli", "chat", "--url", gw.url, "slow",
            stdin=follower, stdout=follower, stderr=follower)
        os.close(follower)
        os.set_blocking(leader, False)
        seen = b""

        async def until(done: Callable[[bytes], bool]) -> None:
            """Read the terminal until `done(all read so far)`, for up to 60 seconds."""
            nonlocal seen
            deadline = time.monotonic() + 60
            while not done(seen):
                assert time.monotonic() < deadline, seen
                try:
                    seen += os.read(leader, 4096)
                except BlockingIOError:
                    await asyncio.sleep(0.05)

        try:
            await until(lambda text: b">>> " in text)
            assert b"chatting with slow" in seen and b"/bye" in seen
            os.write(leader, b"Tell me a long story\n")
            await until(lambda text: b"Tell me a long story\r\n" in text)
            mark = len(seen)
            await until(lambda text: len(text[mark:].split()) >= 5)  # words of the answer
            process.send_signal(signal.SIGINT)
            await until(lambda text: b"(answer stopped)\r\n>>> " in text)
            os.write(leader, b"/bye\n")
            assert await asyncio.wait_for(process.wait(), 60) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            os.close(leader)

        async def cut() -> bool:
            return len(gw.recorder.records) == 1

        await wait_until(cut, timeout=30, what="the stopped answer's request ends")
        (record,) = gw.recorder.records
        assert record.completion_tokens < 2000
