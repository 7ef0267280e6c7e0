"""The neuron end to end: a real `neuron serve` process running the bundled Gemma model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex.defaults import BUNDLED_GEMMA

from ..conftest import NeuronProcess

pytestmark = pytest.mark.model

PROFILE = {"id": "gemma", "source": "bundled:gemma3-270m", "chat_format": "gemma",
           "n_ctx": 1024}


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    tmp = tmp_path_factory.mktemp("neuron")
    process = NeuronProcess({"cache_dir": str(cache_dir), "model_dirs": [str(gemma_path.parent)],
                             "name": "test-node", "preload": [PROFILE]}, tmp)
    process.wait_ready()
    client = httpx.Client(base_url=process.url, timeout=60)
    deadline = time.monotonic() + 60
    while not _model(client, "gemma") or _model(client, "gemma")["state"] != "ready":
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.1)
    yield process
    process.stop()


@pytest.fixture
def client(neuron: NeuronProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=neuron.url, timeout=120) as c:
        yield c


def _model(client: httpx.Client, model_id: str) -> dict[str, Any] | None:
    for m in client.get("/models").json()["models"]:
        if m["id"] == model_id:
            return dict(m)
    return None


def _sse(response: httpx.Response) -> Iterator[dict[str, Any] | str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


def _greedy(client: httpx.Client, prompt: str, n: int, **extra: Any) -> dict[str, Any]:
    reply = client.post("/v1/completions", json={"model": "gemma", "prompt": prompt,
                                                  "max_tokens": n, "temperature": 0, **extra})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_the_server_s_own_lines_are_logged_once(neuron: NeuronProcess) -> None:
    """hypercorn logs through the neuron's handler, not also through one of its own."""
    assert neuron.log().count(f"Running on http://127.0.0.1:{neuron.port}") == 1, neuron.log()


def test_status_reports_node_budget_and_model(client: httpx.Client) -> None:
    status = client.get("/status").json()
    assert status["node"] == "test-node"
    assert status["cpu_only"] is True and status["gpus"] == []
    model = next(m for m in status["models"] if m["id"] == "gemma")
    estimate = model["estimate"]
    assert estimate["total"] == estimate["weights"] + estimate["kv_cache"] + \
        estimate["compute"] + estimate["overhead"]
    assert estimate["weights"] > 200_000_000  # the 240 MB GGUF
    # gemma3 270M: 18 layers x 1 KV head x (256 + 256) dims x 2 bytes x n_ctx 1024 x 1 slot
    assert estimate["kv_cache"] == 18 * 1 * 512 * 2 * 1024
    assert status["reserved_bytes"] >= estimate["total"]
    assert status["free_bytes"] == status["budget_bytes"] - status["reserved_bytes"]
    assert model["load_seconds"] > 0 and model["measured_bytes"] > 0


def test_stream_chat_completion_with_openai_sdk(neuron: NeuronProcess) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="unused")
    stream = sdk.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_frames_end_with_usage_and_done(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "gemma", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        frames = list(_sse(reply))
    assert frames[-1] == "[DONE]"
    finish, last = frames[-3], frames[-2]
    assert isinstance(finish, dict) and isinstance(last, dict)
    assert finish["choices"][0]["finish_reason"] == "length"
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    first = frames[0]
    assert isinstance(first, dict) and first["choices"][0]["delta"]["role"] == "assistant"


def test_completion_is_greedy_deterministic_and_counts_tokens(client: httpx.Client) -> None:
    a = _greedy(client, "The capital of France is", 16)
    b = _greedy(client, "The capital of France is", 16)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["choices"][0]["finish_reason"] == "length"
    assert a["usage"]["completion_tokens"] == 16
    count = client.post("/tokenize", json={"model": "gemma",
                                           "text": "The capital of France is"}).json()["count"]
    assert a["usage"]["prompt_tokens"] == count


def test_stop_string_ends_generation_before_it(client: httpx.Client) -> None:
    text = _greedy(client, "The capital of France is", 16)["choices"][0]["text"]
    words = text.split()
    assert len(words) >= 3
    stop = words[2]
    stopped = _greedy(client, "The capital of France is", 16, stop=[stop])
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]


def test_seeded_sampling_repeats(client: httpx.Client) -> None:
    def sample(seed: int) -> str:
        reply = client.post("/v1/completions", json={
            "model": "gemma", "prompt": "Once upon a time", "max_tokens": 12,
            "temperature": 1.0, "seed": seed})
        return str(reply.json()["choices"][0]["text"])

    # The first call evaluates the whole prompt; later ones reuse its KV cache and
    # re-evaluate one token, whose logits differ in the last bits (batch size 1 vs N),
    # as in llama-server with cache_prompt. Compare warm calls with each other.
    sample(1234)
    assert sample(1234) == sample(1234)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def test_tokenize_text_and_chat_template(client: httpx.Client) -> None:
    text = client.post("/tokenize", json={"model": "gemma", "text": "hello world",
                                          "return_tokens": True}).json()
    assert text["count"] == len(text["tokens"]) >= 2
    chat = client.post("/tokenize", json={
        "model": "gemma", "messages": [{"role": "user", "content": "hello world"}]}).json()
    # The gemma template wraps the message in <start_of_turn>user ... <start_of_turn>model.
    assert chat["count"] > text["count"] + 4


def test_bad_input_gets_openai_errors_and_the_daemon_keeps_serving(
        client: httpx.Client) -> None:
    unknown = client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    malformed = client.post("/v1/completions", content=b'{"model": ')
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    wrong_type = client.post("/v1/completions", json={"model": "gemma", "prompt": 5})
    assert wrong_type.status_code == 400 and "$.prompt" in wrong_type.json()["error"]["message"]
    too_long = client.post("/v1/completions", json={"model": "gemma",
                                                     "prompt": "word " * 2000})
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "> 1024 maximum" in error["message"]
    assert client.post("/nowhere").status_code == 404
    assert _greedy(client, "Hello", 2)["usage"]["completion_tokens"] == 2


def test_concurrent_loads_of_one_model_coalesce(client: httpx.Client) -> None:
    profile = {**PROFILE, "id": "gemma-twice", "n_ctx": 256}
    results: list[httpx.Response] = []

    def load() -> None:
        results.append(client.post("/models/load", json={"profile": profile}))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert len({r.json()["load_seconds"] for r in results}) == 1  # one load, reported thrice
    again = client.post("/models/load", json={"profile": profile})
    assert again.json()["load_seconds"] == results[0].json()["load_seconds"]
    # A changed profile for a ready model is taken: here by loading it again under it.
    changed = client.post("/models/load", json={"profile": {**profile, "n_ctx": 512}})
    assert changed.status_code == 200 and changed.json()["n_ctx"] == 512, changed.text
    assert client.post("/models/unload", json={"model": "gemma-twice"}).status_code == 200
    assert _model(client, "gemma-twice") is None


def test_unload_waits_for_the_running_request(client: httpx.Client) -> None:
    profile = {**PROFILE, "id": "gemma-unload", "n_ctx": 512}
    assert client.post("/models/load", json={"profile": profile}).status_code == 200
    frames: list[Any] = []
    started = threading.Event()

    def stream() -> None:
        with client.stream("POST", "/v1/completions", json={
                "model": "gemma-unload", "prompt": "Count:", "max_tokens": 60,
                "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}) as reply:
            for frame in _sse(reply):
                frames.append(frame)
                started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    unloaded = client.post("/models/unload", json={"model": "gemma-unload"})
    reader.join(60)
    assert unloaded.status_code == 200
    assert frames[-1] == "[DONE]"
    assert frames[-2]["usage"]["completion_tokens"] == 60  # nothing cut short
    assert _model(client, "gemma-unload") is None


def test_forced_unload_ends_the_request_with_an_error(client: httpx.Client) -> None:
    profile = {**PROFILE, "id": "gemma-force", "n_ctx": 512}
    assert client.post("/models/load", json={"profile": profile}).status_code == 200
    frames: list[Any] = []
    started = threading.Event()

    def stream() -> None:
        with client.stream("POST", "/v1/completions", json={
                "model": "gemma-force", "prompt": "Count:", "max_tokens": 400,
                "stream": True}) as reply:
            for frame in _sse(reply):
                frames.append(frame)
                started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    assert client.post("/models/unload", json={"model": "gemma-force",
                                               "force": True}).status_code == 200
    reader.join(30)
    assert not reader.is_alive()
    errors = [f for f in frames if isinstance(f, dict) and "error" in f]
    assert errors and "unloaded" in errors[0]["error"]["message"]
    assert "[DONE]" not in frames
    assert _model(client, "gemma-force") is None


def test_client_disconnect_stops_generation(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/completions", json={
            "model": "gemma", "prompt": "Count:", "max_tokens": 900,
            "stream": True}) as reply:
        for n, _ in enumerate(_sse(reply)):
            if n == 3:
                break
    deadline = time.monotonic() + 5
    while (model := _model(client, "gemma")) and model["in_flight"]:
        assert time.monotonic() < deadline, "generation kept running after the disconnect"
        time.sleep(0.05)
    # The slot is free again: a new request is served (not a timed check: the wait
    # above already showed the generation stopped).
    assert _greedy(client, "Hi", 2)["usage"]["completion_tokens"] == 2


def test_load_outside_model_dirs_is_refused(client: httpx.Client, gemma_path: Path,
                                            tmp_path: Path) -> None:
    outside = tmp_path / "evil.gguf"
    outside.write_bytes(b"GGUF")
    escape = gemma_path.parent / "escape.gguf"
    escape.unlink(missing_ok=True)
    escape.symlink_to(outside)
    for source in ("../../etc/passwd", "/etc/passwd", str(outside), "escape.gguf"):
        reply = client.post("/models/load", json={"profile": {"id": "evil", "source": source}})
        assert reply.status_code == 403, (source, reply.text)
        assert "outside the configured model_dirs" in reply.json()["error"]["message"]
    assert _model(client, "evil") is None


def test_load_from_a_path_inside_model_dirs(client: httpx.Client, gemma_path: Path) -> None:
    reply = client.post("/models/load", json={"profile": {
        "id": "by-path", "source": gemma_path.name, "n_ctx": 256}})
    assert reply.status_code == 200, reply.text
    # No chat template anywhere (base model, no chat_format): chat is refused, text works.
    chat = client.post("/v1/chat/completions", json={
        "model": "by-path", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400
    assert "no chat template" in chat.json()["error"]["message"]
    text = client.post("/v1/completions", json={"model": "by-path", "prompt": "Hi",
                                                "max_tokens": 2})
    assert text.status_code == 200
    client.post("/models/unload", json={"model": "by-path"})


def test_bundled_profile_is_valid_for_the_neuron(client: httpx.Client) -> None:
    import msgspec

    profile = msgspec.to_builtins(BUNDLED_GEMMA)
    profile["n_ctx"] = 256
    reply = client.post("/models/load", json={"profile": profile})
    assert reply.status_code == 200, reply.text
    assert client.post("/models/unload", json={"model": BUNDLED_GEMMA.id}).status_code == 200


def test_embeddings_for_a_profile_loaded_with_them(client: httpx.Client) -> None:
    profile = {"id": "gemma-embed", "source": "bundled:gemma3-270m", "n_ctx": 256,
               "embeddings": True}
    assert client.post("/models/load", json={"profile": profile}).status_code == 200
    reply = client.post("/v1/embeddings", json={"model": "gemma-embed",
                                                "input": ["a cat", "a cat", "stock prices"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert len(vectors[0]) == 640  # Gemma 3 270M's embedding width
    assert vectors[0] == vectors[1] and vectors[0] != vectors[2]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3  # normalised
    assert body["usage"]["prompt_tokens"] > 0
    not_loaded_for_it = client.post("/v1/embeddings", json={"model": "gemma", "input": "x"})
    assert not_loaded_for_it.status_code == 400
    client.post("/models/unload", json={"model": "gemma-embed"})


def test_secret_guards_everything_but_health(start_neuron: Any) -> None:
    neuron = start_neuron({"secret": "s3cret"})
    with httpx.Client(base_url=neuron.url, timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200
        refused = anonymous.get("/status")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        wrong = anonymous.get("/status", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = anonymous.get("/status", headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200


TOOL_TEMPLATE = ("{% if tools %}Tools: {% for t in tools %}{{ t.function.name }} "
                 "{% endfor %}\n{% endif %}{% for m in messages %}<start_of_turn>{{ m.role }}\n"
                 "{{ m.content }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def test_tools_reach_the_template_and_tool_calls_come_back(client: httpx.Client) -> None:
    profile = {"id": "gemma-tools", "source": "bundled:gemma3-270m", "n_ctx": 512,
               "chat_template": TOOL_TEMPLATE}
    assert client.post("/models/load", json={"profile": profile}).status_code == 200
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    plain = client.post("/tokenize", json={"model": "gemma-tools", "messages": messages})
    with_tools = client.post("/tokenize", json={"model": "gemma-tools", "messages": messages,
                                                "tools": [WEATHER_TOOL]})
    assert with_tools.json()["count"] > plain.json()["count"]
    # A JSON-schema grammar makes the small base model answer with a call, for real.
    schema = {"type": "object", "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {"city": {"const": "Paris"}},
                      "required": ["city"]}}, "required": ["name", "arguments"]}
    request = {"model": "gemma-tools", "messages": messages, "tools": [WEATHER_TOOL],
               "max_tokens": 60, "temperature": 0,
               "response_format": {"type": "json_object", "schema": schema}}
    reply = client.post("/v1/chat/completions", json=request).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls", reply
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    with client.stream("POST", "/v1/chat/completions",
                       json={**request, "stream": True}) as streamed:
        frames = [f for f in _sse(streamed) if isinstance(f, dict)]
    deltas = [f["choices"][0]["delta"] for f in frames if f["choices"]]
    assert not any(d.get("content") for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls") or []]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"
    client.post("/models/unload", json={"model": "gemma-tools"})


def test_streamed_text_equals_whole_text_and_is_clean(client: httpx.Client) -> None:
    whole = _greedy(client, "The capital of France is", 24)["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={
            "model": "gemma", "prompt": "The capital of France is", "max_tokens": 24,
            "temperature": 0, "stream": True}) as reply:
        pieces = [f["choices"][0]["text"] for f in _sse(reply)
                  if isinstance(f, dict) and f["choices"]]
    assert "".join(pieces) == whole
    assert "\x00" not in whole and whole.strip()


def test_estimate_without_loading(client: httpx.Client) -> None:
    reply = client.post("/models/estimate", json={"profile": {**PROFILE, "id": "planned",
                                                              "n_ctx": 2048, "slots": 2}})
    assert reply.status_code == 200, reply.text
    estimate = reply.json()
    assert estimate["kv_cache"] == 18 * 512 * 2 * 2048 * 2
    # Logits for every token of a batch dominate llama.cpp's compute buffer (Gemma's
    # vocabulary: 262,144 f32 a token); it measures 514.5 MiB at the default n_batch 512.
    assert 514 * 2**20 < estimate["compute"] < 600 * 2**20
    assert estimate["total"] == estimate["weights"] + estimate["kv_cache"] + \
        estimate["compute"] + estimate["overhead"]
    assert _model(client, "planned") is None
    bigger = client.post("/models/estimate", json={"profile": {
        **PROFILE, "id": "planned", "n_ctx": 2048, "slots": 2, "n_batch": 2048}}).json()
    assert bigger["compute"] > 4 * estimate["compute"] * 0.9  # 2058 MiB measured
    assert bigger["total"] - estimate["total"] == bigger["compute"] - estimate["compute"]
    refused = client.post("/models/estimate", json={"profile": {
        **PROFILE, "id": "planned", "n_batch": 2**31}})
    assert refused.status_code == 400 and "n_batch" in refused.text


def test_neuron_models_command_lists_what_is_loaded(neuron: NeuronProcess) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "models", "--url",
                          neuron.url], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("gemma "))
    assert line.split()[1:3] == ["ready", "1024"], out  # MODEL STATE N_CTX ...
    gone = subprocess.run([sys.executable, "-m", "cortex_neuron.cli", "models", "--url",
                           "http://127.0.0.1:9"], capture_output=True, text=True)
    assert gone.returncode == 1 and "http://127.0.0.1:9" in gone.stderr


def test_a_profile_naming_no_harness_here_is_a_client_error(client: httpx.Client) -> None:
    for path in ("/models/load", "/models/estimate"):
        reply = client.post(path, json={"profile": {**PROFILE, "id": "x", "harness": "nope"}})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "harness"
        assert "unknown harness `nope`" in reply.json()["error"]["message"]
