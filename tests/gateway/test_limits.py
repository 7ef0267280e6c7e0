"""Input limits against a real `cortex serve` over a synthetic neuron: each refusal comes
in the client's own dialect envelope with its status, never a 5xx, and leaves every
other request alone (docs/operations.md, "Security and input limits")."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from cortex import Call
from cortex.config import GatewaySection
from cortex.gateway.limits import MAX_JSON_DEPTH, for_profile, json_too_deep

from ..serve_support import PROFILES, GatewayProcess, served, synthetic_neuron

BODY_LIMIT = 256 * 1024
TOOLS_LIMIT = 16 * 1024
HEADER_LIMIT = 16 * 1024
ANTHROPIC = {"anthropic-version": "2023-06-01"}
SLOW = {"id": "slow", "source": "synthetic:rate=40,tokens=16", "harness": "synthetic",
        "n_ctx": 512}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    neuron = synthetic_neuron(tmp)
    try:
        with served(tmp, [{"name": "n1", "endpoint": neuron.url}], profiles=[*PROFILES, SLOW],
                    gateway={"max_body_bytes": BODY_LIMIT, "max_tools_bytes": TOOLS_LIMIT,
                             "max_header_bytes": HEADER_LIMIT}) as gw:
            yield gw
            # Nothing above was a 500 in disguise: no handler failed.
            assert "unhandled error" not in gw.log() and "Traceback" not in gw.log(), gw.log()
    finally:
        neuron.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def chat(model: str = "syn", **fields: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 3,
            "messages": [{"role": "user", "content": "hello"}], **fields}


def openai_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def anthropic_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    error: dict[str, Any] = body["error"]
    return error


# --- body size ------------------------------------------------------------------------------

def _big_chat(size: int) -> bytes:
    return json.dumps(chat(messages=[{"role": "user", "content": "x" * size}])).encode()


def test_a_body_over_max_body_bytes_is_413_in_each_dialect(client: httpx.Client) -> None:
    body = _big_chat(BODY_LIMIT)
    error = openai_error(client.post("/v1/chat/completions", content=body), 413)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert f"over {BODY_LIMIT} bytes (max_body_bytes)" in error["message"]
    error = anthropic_error(client.post("/v1/messages", content=body, headers=ANTHROPIC), 413)
    assert error["type"] == "request_too_large"
    # Just under the limit is served.
    assert client.post("/v1/chat/completions", content=_big_chat(BODY_LIMIT - 1024)
                       ).status_code in (200, 400)


def test_a_chunked_body_is_cut_off_as_it_streams_in(client: httpx.Client) -> None:
    """No Content-Length: the gateway counts while reading and answers once over the
    limit, without waiting for (or holding) the rest."""
    sent = 0
    total = 64 * 2**20

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "syn", "messages": [{"role": "user", "content": "'
        while sent < total:
            sent += 64 * 1024
            yield b"x" * (64 * 1024)
        yield b'"}]}'

    reply = client.post("/v1/chat/completions", content=body())
    assert openai_error(reply, 413)["code"] == "request_too_large"
    assert sent < total  # the client was stopped long before it had sent it all


# --- header size -----------------------------------------------------------------------------

def test_an_oversized_header_is_431_and_harms_nothing(client: httpx.Client,
                                                      gateway: GatewayProcess) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * HEADER_LIMIT)
                    + b"\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert client.get("/health").status_code == 200
    # A head under the limit is fine.
    assert client.get("/health", headers={"x-big": "a" * (HEADER_LIMIT // 2)}).status_code == 200


def _raw(port: int, path: str, size: int, extra: bytes = b"") -> bytes:
    """Send a GET whose request line and headers are exactly `size` bytes; the answer."""
    start = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
             + extra + b"X-Pad: ")
    end = b"\r\n\r\n"
    head = start + b"a" * (size - len(start) - len(end)) + end
    assert len(head) == size
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(head)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


def test_max_header_bytes_is_the_limit_to_the_byte(gateway: GatewayProcess) -> None:
    """hypercorn alone let through any head that ended within the 64 KiB read crossing
    its limit (up to about twice max_header_bytes); the gateway counts exactly."""
    port = int(gateway.url.rsplit(":", 1)[1])
    assert _raw(port, "/v1/models", HEADER_LIMIT).startswith(b"HTTP/1.1 200 ")
    over = _raw(port, "/v1/models", HEADER_LIMIT + 1)
    assert over.startswith(b"HTTP/1.1 431 "), over[:200]
    error = json.loads(over.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert f"at most {HEADER_LIMIT} (max_header_bytes)" in error["message"]
    anthropic = _raw(port, "/v1/messages", HEADER_LIMIT + 1)
    assert anthropic.startswith(b"HTTP/1.1 431 ")
    assert json.loads(anthropic.partition(b"\r\n\r\n")[2])["type"] == "error"
    # Well over (as the test above) hypercorn refuses on its own, before a byte reaches
    # the app; between the two, only the gateway's count refuses it.
    assert _raw(port, "/v1/models", HEADER_LIMIT + 32 * 1024).startswith(b"HTTP/1.1 431 ")


# --- max_tokens and context ------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "expected", "finish"), [
    ({"max_tokens": 50}, 5, "length"),
    ({"max_completion_tokens": 50}, 5, "length"),
    ({"max_tokens": 3}, 3, "length"),
])
def test_max_tokens_is_clamped_to_the_profiles_cap(client: httpx.Client, fields: dict[str, Any],
                                                   expected: int, finish: str) -> None:
    body = {"model": "capped", "messages": [{"role": "user", "content": "hi"}], **fields}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == expected
    assert reply.json()["choices"][0]["finish_reason"] == finish
    completion = client.post("/v1/completions", json={"model": "capped", "prompt": "hi",
                                                      **fields})
    if "max_tokens" in fields:
        assert completion.json()["usage"]["completion_tokens"] == expected


class _Decodes:
    """msgspec.json.decode, counted: how often the gateway parses a body to rewrite it."""

    def __init__(self) -> None:
        self.count = 0
        self._decode = msgspec.json.decode

    def __call__(self, data: bytes) -> Any:
        self.count += 1
        return self._decode(data)


def test_alias_and_cap_are_one_rewrite_and_nothing_else_is_parsed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The dialect's view read `model` and the budgets, so a body that needs no change is
    passed on as it came, unparsed, and one that does is parsed once (before, an alias
    and a cap cost up to three parses here: rename, a budget view, the cap)."""
    decodes = _Decodes()
    monkeypatch.setattr(msgspec.json, "decode", decodes)
    body = b'{"model":"alias","max_tokens":50,"max_completion_tokens":9,"messages":[]}'
    call = Call(path="/v1/chat/completions", model="alias", body=body, max_tokens=50,
                max_completion_tokens=9)
    assert for_profile(call, "alias", None) is body  # no alias, no cap
    assert for_profile(call, "alias", 50) is body  # at the cap is not over it
    assert decodes.count == 0
    assert json.loads(for_profile(call, "profile", 10)) == {
        "model": "profile", "max_tokens": 10, "max_completion_tokens": 9, "messages": []}
    assert decodes.count == 1
    assert json.loads(for_profile(call, "alias", 5))["max_completion_tokens"] == 5
    # A budget the view could not read as an integer is the neuron's to refuse.
    odd = Call(path="/v1/completions", model="m", body=b'{"model":"m","max_tokens":"x"}')
    assert for_profile(odd, "m", 5) is odd.body


def test_anthropic_max_tokens_is_clamped_too(client: httpx.Client) -> None:
    reply = client.post("/v1/messages", headers=ANTHROPIC, json=chat("capped", max_tokens=4096))
    assert reply.status_code == 200, reply.text
    assert (reply.json()["usage"]["output_tokens"], reply.json()["stop_reason"]) == \
        (5, "max_tokens")
    with client.stream("POST", "/v1/messages", headers=ANTHROPIC,
                       json=chat("capped", max_tokens=4096, stream=True)) as stream:
        data = [json.loads(line[6:]) for line in stream.iter_lines()
                if line.startswith("data: ")]
    delta = next(d for d in data if d["type"] == "message_delta")
    assert (delta["usage"]["output_tokens"], delta["delta"]["stop_reason"]) == (5, "max_tokens")


def test_a_prompt_over_n_ctx_is_400_in_each_dialect(client: httpx.Client) -> None:
    long = " ".join(["word"] * 100)  # `syn` has n_ctx 64
    body = chat(messages=[{"role": "user", "content": long}])
    error = openai_error(client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 64 maximum", error["message"])
    error = anthropic_error(client.post("/v1/messages", json=body, headers=ANTHROPIC), 400)
    assert error["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 64 maximum", error["message"])
    with client.stream("POST", "/v1/messages", headers=ANTHROPIC,
                       json={**body, "stream": True}) as stream:
        assert stream.status_code == 400  # refused before the stream started


# --- hostile JSON -----------------------------------------------------------------------------

def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("where", ["content", "unknown"])
def test_deep_nesting_is_400_not_a_recursion_error(client: httpx.Client, where: str) -> None:
    for depth in (10_000, MAX_JSON_DEPTH + 1):
        if where == "content":
            body = ('{"model": "syn", "max_tokens": 3, "messages": [{"role": "user", '
                    f'"content": {_nested(depth)}}}]}}')
        else:
            body = ('{"model": "syn", "max_tokens": 3, "messages": [{"role": "user", '
                    f'"content": "hi"}}], "junk": {_nested(depth)}}}')
        error = openai_error(client.post("/v1/chat/completions", content=body), 400)
        assert f"nests deeper than {MAX_JSON_DEPTH} levels" in error["message"]
        error = anthropic_error(client.post("/v1/messages", content=body, headers=ANTHROPIC),
                                400)
        assert "nests deeper" in error["message"]
    # Unclosed openers are as deep to a parser.
    assert client.post("/v1/completions", content="[" * 10_000).status_code == 400
    # Deep but within the limit passes the gateway (the field is ignored downstream).
    fine = ('{"model": "syn", "max_tokens": 3, "messages": [{"role": "user", '
            f'"content": "hi"}}], "junk": {_nested(MAX_JSON_DEPTH - 4)}}}')
    assert client.post("/v1/chat/completions", content=fine).status_code == 200


@pytest.mark.parametrize("payload", [
    b'{"model": "syn", "max_tokens": 3, "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "syn", "max_tokens": 3, "messages": [{"role": "user", "content": "\xc3"}]}',
    b'{"model": "syn\xed\xa0\x80", "max_tokens": 3, "messages": []}',  # an encoded surrogate
])
def test_invalid_utf8_is_400_in_each_dialect(client: httpx.Client, payload: bytes) -> None:
    error = openai_error(client.post("/v1/chat/completions", content=payload), 400)
    assert "not valid UTF-8" in error["message"]
    error = anthropic_error(client.post("/v1/messages", content=payload, headers=ANTHROPIC),
                            400)
    assert "not valid UTF-8" in error["message"]
    escaped = b'{"model": "syn", "max_tokens": 3, "messages": [{"role": "user", ' \
              b'"content": "\\ud800"}]}'  # a lone surrogate escape: valid UTF-8, bad JSON
    assert client.post("/v1/messages", content=escaped, headers=ANTHROPIC).status_code == 400
    assert client.post("/v1/chat/completions", content=escaped).status_code == 400


def _tools(size: int) -> list[dict[str, Any]]:
    schema = {"type": "object", "properties": {"q": {"type": "string",
                                                     "description": "d" * size}}}
    return [{"type": "function", "function": {"name": "search", "parameters": schema}}]


def test_oversized_tools_are_413_in_each_dialect(client: httpx.Client) -> None:
    error = openai_error(client.post("/v1/chat/completions", json=chat(tools=_tools(TOOLS_LIMIT))),
                         413)
    assert error["param"] == "tools" and "max_tools_bytes" in error["message"]
    anthropic_tools = [{"name": "search", "input_schema": {"type": "object",
                                                           "description": "d" * TOOLS_LIMIT}}]
    error = anthropic_error(client.post("/v1/messages", headers=ANTHROPIC,
                                        json=chat(tools=anthropic_tools)), 413)
    assert error["type"] == "request_too_large" and "max_tools_bytes" in error["message"]
    assert client.post("/v1/messages/count_tokens", headers=ANTHROPIC,
                       json=chat(tools=anthropic_tools)).status_code == 413
    small = client.post("/v1/chat/completions", json=chat(tools=_tools(100)))
    assert small.status_code == 200, small.text


# --- isolation ----------------------------------------------------------------------------------

def test_refusals_leave_a_stream_in_flight_untouched(client: httpx.Client,
                                                     gateway: GatewayProcess) -> None:
    frames: list[Any] = []
    started = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as own, own.stream(
                "POST", "/v1/chat/completions",
                json={"model": "slow", "stream": True, "max_tokens": 16,
                      "messages": [{"role": "user", "content": "go"}]}) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    started.set()
                    frames.append(line[6:])

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(60)
    for _ in range(3):
        assert client.post("/v1/chat/completions", content=_big_chat(BODY_LIMIT)
                           ).status_code == 413
        assert client.post("/v1/chat/completions", content="[" * 10_000).status_code == 400
        assert client.post("/v1/messages", content=b"\xff", headers=ANTHROPIC
                           ).status_code == 400
    reader.join(60)
    assert frames[-1] == "[DONE]"
    text = "".join(json.loads(f)["choices"][0]["delta"].get("content") or ""
                   for f in frames[:-1] if json.loads(f)["choices"])
    assert len(text.split()) == 16


# --- the request log --------------------------------------------------------------------------

_LOGFMT = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')
FIELDS = ["request_id", "method", "path", "model", "node", "dialect", "status", "stream",
          "tokens_in", "tokens_out", "ttft", "duration", "queue", "retries"]
#: A request refused before it reached a model (cortex.gateway.requestlog).
REFUSAL_FIELDS = ["request_id", "method", "path", "status"]


def _logfmt(line: str) -> dict[str, str]:
    """The fields of one logfmt line, quoted values decoded; fails on anything else."""
    pairs = _LOGFMT.findall(line)
    assert "".join(f"{k}={v} " for k, v in pairs).rstrip() == line, line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def test_client_text_cannot_forge_request_log_lines_or_fields(client: httpx.Client,
                                                             gateway: GatewayProcess) -> None:
    forged_model = 'nope\nrequest_id=forged model=syn status=200 x="'
    forged_id = 'mine" status=200 extra="'
    reply = client.post("/v1/chat/completions", json=chat(forged_model),
                        headers={"x-request-id": "plain-id"})
    assert reply.status_code == 404
    assert client.post("/v1/chat/completions", json=chat("x" * 5000)).status_code == 404
    reply = client.post("/v1/chat/completions", json=chat(),
                        headers={"x-request-id": forged_id})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == forged_id
    # Control characters (an escape sequence, NEL, which splitlines takes for a line
    # break) never reach a header or a log: the request gets an id of its own.
    reply = client.post("/v1/chat/completions", json=chat(),
                        headers={"x-request-id": b"bad\x1b[2J\x85id"})
    assert reply.status_code == 200, reply.text
    assert re.fullmatch("[0-9a-f]{32}", reply.headers["x-request-id"])
    assert client.post("/v1/chat/completions", json=chat(), headers={
        "x-request-id": "i" * 129}).headers["x-request-id"] != "i" * 129

    def lines() -> list[str]:
        return [line.split("cortex.requests: ", 1)[1] for line in gateway.log().splitlines()
                if "cortex.requests: " in line]

    gateway.wait(lambda _: any("plain-id" in line for line in lines())
                 and any("mine" in line for line in lines()), "the three are logged")
    assert not any("forged" in line.split("cortex.requests: ")[0]
                   for line in gateway.log().splitlines())  # no line of its own
    for line in lines():
        # No field added, none lost; a 4xx or 5xx says why.
        assert list(_logfmt(line)) in (FIELDS, [*FIELDS, "reason"], REFUSAL_FIELDS,
                                       [*REFUSAL_FIELDS, "reason"]), line
        assert len(line) < 700  # each client text cut (the reason to 256 characters)
    by_id = {_logfmt(line)["request_id"]: _logfmt(line) for line in lines()}
    assert by_id["plain-id"]["model"] == forged_model  # escaped, and read back whole
    assert by_id["plain-id"]["status"] == "404"
    assert by_id[forged_id]["status"] == "200"
    assert any(fields.get("model") == "x" * 128 + "..." for fields in by_id.values())


# --- units --------------------------------------------------------------------------------------

def test_documented_defaults() -> None:
    section = GatewaySection()
    assert (section.max_body_bytes, section.max_header_bytes, section.max_tools_bytes) == \
        (16 * 2**20, 64 * 2**10, 2**20)


@pytest.mark.parametrize(("body", "deep"), [
    (_nested(MAX_JSON_DEPTH), False), (_nested(MAX_JSON_DEPTH + 1), True),
    ("[" * 10_000, True), ("{\"a\": " * 200 + "1" + "}" * 200, True),
    (json.dumps({"s": "[[[[{{{{" * 1000}), False),  # brackets inside strings do not count
    (json.dumps([[i] for i in range(5000)]), False),
    ("[" + "[" * 60 + "{\"a\":" * 60 + "1" + "}" * 60 + "]" * 60 + ","
     + _nested(MAX_JSON_DEPTH - 1) + "]", False),
    ("[" * 100 + "{\"a\":" * 100 + "1" + "}" * 100 + "]" * 100, True),
    ("[" * 150 + "}" * 150, True),  # mismatched: a parser still descends 150 levels
])
def test_json_too_deep(body: str, deep: bool) -> None:
    assert json_too_deep(body.encode()) is deep
    if not deep:
        msgspec.json.decode(body.encode())  # and what passes, msgspec can decode
