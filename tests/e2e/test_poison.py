"""Poison corpus: structured-output schemas and prompt token ids an attacker would send,
through a real `cortex serve` to a two-neuron fleet running the bundled Gemma, in both
dialects (`response_format` with the openai SDK, `output_config.format` with the
anthropic SDK).

Every answer must be a generation or a 4xx in the dialect's own envelope; both neurons
must be alive afterwards; and bystander streams on the same models, started before the
corpus and kept going until it ends, must all finish intact. Before the neuron checked
grammars, 12 of 60 random schemas (innocent ones included) took a neuron down with
SIGSEGV, and a bad token id ended every stream batched beside it.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ..conftest import NeuronProcess
from ..gateway_support import neuron_fleet, sse_data, sse_lines
from ..serve_support import GatewayProcess, served

pytestmark = pytest.mark.model

MODELS = ["poison-a", "poison-b"]  # one on each neuron
# One thread each: two neurons and their bystanders share the test machine's cores.
PROFILES = [{"id": model, "source": "bundled:gemma3-270m", "chat_format": "gemma",
             "n_ctx": 1024, "slots": 4, "n_threads": 1, "neurons": [node]}
            for model, node in zip(MODELS, ["a", "b"], strict=True)]
ASK = [{"role": "user", "content": "Reply in JSON."}]
COUNT = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]

# The schemas of the findings, and more of their kind.
NAMED: list[Any] = [
    {"enum": []}, {"anyOf": []}, {"oneOf": []}, {"allOf": []}, {"type": []},
    {"const": "\""}, {"const": "\u0000"}, {"const": "\\"}, {"const": "a\"b\\c\n\u2028😀"},
    {"type": "string", "pattern": "^(a|)*$"}, {"type": "string", "pattern": "^a{0,2000}$"},
    {"type": "string", "pattern": "^a{0,30000}$"}, {"type": "string", "pattern": "^a{0,1000}$"},
    {"type": "string", "pattern": "^((a{0,100})b){0,100}$"},
    {"type": "string", "pattern": "^\\x00$"}, {"type": "string", "pattern": "^a\\x00$"},
    {"type": "string", "pattern": "^(((((((((((((((((((((((((((((((((a)))))))))))))))))"
                                  "))))))))))))))))$"},
    {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
    {"type": "string", "maxLength": 10**9}, {"type": "string", "minLength": 5, "maxLength": 2},
    {"$ref": "https://example.com/schema.json"}, {"$ref": "#/$defs/missing"},
    {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
    {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}},
    {"enum": list(range(1001))}, {"type": "integer", "minimum": 10**400},
]
NESTED: dict[str, Any] = {"type": "string"}
for _ in range(80):
    NESTED = {"type": "array", "items": NESTED}
NAMED.append(NESTED)
TOKEN_IDS = [262144, -1, 2**31 - 1, 2**32, 2**40]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path, cache_dir: Path
          ) -> Iterator[tuple[GatewayProcess, dict[str, NeuronProcess]]]:
    tmp = tmp_path_factory.mktemp("poison")
    with neuron_fleet(tmp, cache_dir, ["a", "b"]) as neurons, \
            served(tmp, [{"name": name, "endpoint": n.url} for name, n in neurons.items()],
                   profiles=PROFILES, gateway={"request_timeout": 300.0}) as gateway:
        for model in MODELS:  # both loaded before anything is timed
            reply = httpx.post(f"{gateway.url}/v1/completions", timeout=120, json={
                "model": model, "prompt": "Hi", "max_tokens": 1})
            assert reply.status_code == 200, reply.text
        yield gateway, neurons


# --- a seeded generator of awkward JSON schemas ---------------------------------------------

ODD_VALUES: list[Any] = ['"', "\\", "\u0000", "\x01\x1f", "é", "😀", "a\"b\\c\n", "\u2028",
                         "", 10**30, -10**30, 1.5e-300, -1e308, 0, None, True, False,
                         [1, {"a": '"'}], {"k": "\\u0000"}, {"": []}]
COUNTS = [0, 1, 2, 5, 999, 1000, 1001, 2000, 30000, 10**9, -1, 2.5, "3", True]
NAMES = ["a", "", "with space", 'quo"te', "back\\slash", "é", "😀", "new\nline", "$ref", "enum"]
FORMATS = ["date", "time", "date-time", "uuid", "email", "uri", "no-such-format"]
PATTERN_PARTS = ["a", "b", "[a-z]", "[^\\]]", ".", "\\d", "\\x00", "\\u00e9", "(a|b)", "(a|)",
                 "(x?)", "\"", "\\\\"]
QUANTIFIERS = ["", "*", "+", "?", "{2}", "{0,5}", "{1,}", "{999}", "{0,1000}", "{1001}",
               "{0,2000}", "{30000}", "{1000000000}", "{3,1}"]


def _pattern(rng: random.Random) -> str:
    body = ""
    for _ in range(rng.randint(1, 4)):
        part = rng.choice(PATTERN_PARTS) + rng.choice(QUANTIFIERS)
        if rng.random() < 0.4:  # nested quantifiers
            part = f"({part}){rng.choice(QUANTIFIERS)}"
        body += part
    return rng.choice([f"^{body}$", f"^{body}$", body, f"^{body}"])


def _leaf(rng: random.Random) -> Any:
    kind = rng.randrange(10)
    if kind == 0:
        return {"type": rng.choice(["string", "integer", "number", "boolean", "null"])}
    if kind == 1:
        return {"enum": rng.sample(ODD_VALUES, rng.choice([0, 1, 2, 4]))}
    if kind == 2:
        return {"const": rng.choice(ODD_VALUES)}
    if kind == 3:
        return {"type": "string", "pattern": _pattern(rng)}
    if kind == 4:
        return {"type": "string", "format": rng.choice(FORMATS)}
    if kind == 5:
        return {"type": "string", "minLength": rng.choice(COUNTS),
                "maxLength": rng.choice(COUNTS)}
    if kind == 6:
        return {"type": rng.sample(["string", "integer", "null", "boolean", "nope"],
                                   rng.randint(0, 3))}
    if kind == 7:
        return {"type": rng.choice(["integer", "number"]),
                "minimum": rng.choice([10**400, -1e308, 0]), "maximum": -10**30}
    if kind == 8:
        return {}
    return rng.choice([True, False, None, "string", []])  # not a schema at all


def _schema(rng: random.Random, depth: int = 0) -> Any:
    if depth >= 3 or rng.random() < 0.3:
        return _leaf(rng)
    kind = rng.randrange(5)
    if kind == 0:
        names = rng.sample(NAMES, rng.randint(0, 4))
        required = rng.sample([*names, "missing"], rng.randint(0, min(2, len(names) + 1)))
        out: dict[str, Any] = {"type": "object",
                               "properties": {n: _schema(rng, depth + 1) for n in names},
                               "required": required}
        if rng.random() < 0.3:
            out["additionalProperties"] = rng.choice([True, False, _schema(rng, depth + 1)])
        return out
    if kind == 1:
        if rng.random() < 0.3:
            return {"type": "array",
                    "prefixItems": [_schema(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
        return {"type": "array", "items": _schema(rng, depth + 1),
                "minItems": rng.choice(COUNTS), "maxItems": rng.choice(COUNTS)}
    if kind == 2:
        key = rng.choice(["anyOf", "oneOf", "allOf"])
        return {key: [_schema(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
    if kind == 3:
        return rng.choice([
            {"$defs": {"x": _schema(rng, depth + 1)}, "$ref": "#/$defs/x"},
            {"definitions": {"x": _schema(rng, depth + 1)}, "$ref": "#/definitions/x"},
            {"$ref": "#/$defs/nowhere"}, {"$ref": "https://example.com/s.json"},
            {"$ref": rng.choice(["#", "#/", "x.json", 5])},
            {"$defs": {"node": {"type": "object", "properties": {
                "next": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"}])
    return {"type": "object", "properties": {"v": _schema(rng, depth + 1)},
            "required": ["v"], "const": rng.choice(ODD_VALUES)}


def corpus() -> list[Any]:
    rng = random.Random(14)
    return NAMED + [_schema(rng) for _ in range(110)]


# --- bystanders -------------------------------------------------------------------------------

class Bystanders:
    """Streams on both models, one after another per dialect, from before the corpus
    until it ends; each records how it ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = threading.Event()
        self.endings: list[tuple[str, str]] = []  # (dialect, "ok" or what went wrong)
        self.threads = [threading.Thread(target=self._loop, args=(self._openai,)),
                        threading.Thread(target=self._loop, args=(self._anthropic,))]
        for thread in self.threads:
            thread.start()

    def _loop(self, stream: Callable[[httpx.Client], str]) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while True:
                try:
                    ending = stream(client)
                except Exception as exc:  # a dropped connection is an ending too
                    ending = repr(exc)
                self.endings.append((stream.__name__, ending))
                if self.done.is_set():
                    return

    def _openai(self, client: httpx.Client) -> str:
        """Raw SSE, to see `data: [DONE]` itself."""
        with client.stream("POST", "/v1/chat/completions", json={
                "model": MODELS[0], "messages": COUNT, "max_tokens": 120, "stream": True,
                "temperature": 0, "ignore_eos": True}) as reply:
            body = reply.read().decode()
        data = sse_data(sse_lines(body))
        if reply.status_code != 200 or not data or data[-1] != "[DONE]":
            return f"{reply.status_code}: {body[-300:]}"
        if any("error" in d for d in data if isinstance(d, dict)):
            return f"error frame: {body[-300:]}"
        finish = [c["choices"][0]["finish_reason"] for c in data[:-1] if c.get("choices")]
        return "ok" if finish[-1] == "length" else f"finished {finish[-1]}"

    def _anthropic(self, client: httpx.Client) -> str:
        with client.stream("POST", "/v1/messages", json={
                "model": MODELS[1], "messages": COUNT, "max_tokens": 120, "stream": True,
                "temperature": 0}) as reply:
            body = reply.read().decode()
        events = [line[7:] for line in sse_lines(body) if line.startswith("event: ")]
        if reply.status_code != 200 or "error" in events or events[-1:] != ["message_stop"]:
            return f"{reply.status_code}: {body[-300:]}"
        return "ok"

    def finish(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(600)
            assert not thread.is_alive()


def _alive(neurons: dict[str, NeuronProcess]) -> None:
    for name, neuron in neurons.items():
        assert neuron.proc.poll() is None, f"neuron {name} died:\n{neuron.log()[-3000:]}"
        assert httpx.get(f"{neuron.url}/health", timeout=10).status_code == 200


# --- the corpus -------------------------------------------------------------------------------

def _openai_answer(sdk: openai.OpenAI, model: str, schema: Any, max_tokens: int) -> Any:
    try:
        reply = sdk.chat.completions.create(
            model=model, messages=ASK, max_tokens=max_tokens, temperature=0,  # type: ignore[arg-type]
            response_format={"type": "json_schema",  # type: ignore[typeddict-item]
                             "json_schema": {"name": "poison", "schema": schema}})
    except openai.APIStatusError as exc:
        assert 400 <= exc.status_code < 500, (exc.status_code, exc.response.text, schema)
        envelope = exc.response.json()["error"]
        assert envelope["type"] == "invalid_request_error", (envelope, schema)
        assert isinstance(envelope["message"], str) and envelope["message"]
        return exc
    content = reply.choices[0].message.content
    assert isinstance(content, str), (reply, schema)
    return content


def _anthropic_answer(sdk: anthropic.Anthropic, model: str, schema: Any,
                      max_tokens: int) -> Any:
    try:
        reply = sdk.messages.create(
            model=model, messages=ASK, max_tokens=max_tokens,  # type: ignore[arg-type]
            output_config={"format": {"type": "json_schema", "schema": schema}},
            extra_body={"temperature": 0})
    except anthropic.APIStatusError as exc:
        assert 400 <= exc.status_code < 500, (exc.status_code, exc.response.text, schema)
        body = exc.response.json()
        assert body["type"] == "error", (body, schema)
        assert body["error"]["type"] == "invalid_request_error", (body, schema)
        assert body["error"]["message"]
        return exc
    assert reply.type == "message" and reply.stop_reason in ("end_turn", "max_tokens")
    return "".join(block.text for block in reply.content if block.type == "text")


def test_the_poison_corpus_leaves_the_fleet_and_its_streams_whole(
        fleet: tuple[GatewayProcess, dict[str, NeuronProcess]]) -> None:
    gateway, neurons = fleet
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    ant = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=300)
    schemas = corpus()
    assert len(schemas) >= 137  # 27 named, 110 random
    bystanders = Bystanders(gateway.url)
    outcomes: dict[str, int] = {"generated": 0, "refused": 0}
    try:
        for i, schema in enumerate(schemas):
            max_tokens = 1 + i % 4
            for answer in (_openai_answer(oai, MODELS[i % 2], schema, max_tokens),
                           _anthropic_answer(ant, MODELS[(i + 1) % 2], schema, max_tokens)):
                outcomes["refused" if isinstance(answer, Exception) else "generated"] += 1
    finally:
        bystanders.finish()
    _alive(neurons)
    assert bystanders.endings, "no bystander ran"
    assert all(end == "ok" for _, end in bystanders.endings), bystanders.endings
    assert {dialect for dialect, _ in bystanders.endings} == {"_openai", "_anthropic"}
    # Both kinds happened: the corpus is neither all refused nor all served.
    assert outcomes["generated"] >= 40 and outcomes["refused"] >= 40, outcomes


@pytest.mark.parametrize("const", ['"', "\u0000", "\\", "a\"b\\c\n\u2028😀"])
def test_awkward_consts_are_generated_exactly(
        fleet: tuple[GatewayProcess, dict[str, NeuronProcess]], const: str) -> None:
    """Quotes, backslashes and control characters became GBNF that did not parse (the
    converter left backslashes raw): now the grammar makes the model write the const."""
    gateway, _ = fleet
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    text = _openai_answer(oai, MODELS[0], {"const": const}, 40)
    assert isinstance(text, str) and json.loads(text) == const


def test_token_ids_outside_the_vocabulary_are_a_400_naming_them(
        fleet: tuple[GatewayProcess, dict[str, NeuronProcess]]) -> None:
    gateway, neurons = fleet
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    bystanders = Bystanders(gateway.url)
    try:
        for i, token in enumerate(TOKEN_IDS):
            with pytest.raises(openai.BadRequestError) as refused:
                oai.completions.create(model=MODELS[i % 2], prompt=[2, 9259, token],
                                       max_tokens=2)
            assert refused.value.param == "prompt"
            assert f"prompt token id {token} is not in this model's vocabulary" in \
                refused.value.message
    finally:
        bystanders.finish()
    _alive(neurons)
    assert bystanders.endings and all(end == "ok" for _, end in bystanders.endings), \
        bystanders.endings
