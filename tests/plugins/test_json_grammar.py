"""Grammars made from JSON schemas, checked against the real Gemma vocabulary: inside a
JSON string the grammar allows no token that carries a raw control character.

llama-cpp-python's schema converter let control characters through (`[^"\\]`), so a
sampled reply could hold a raw newline inside a string, which no JSON parser accepts
(it failed `test_json_schema_is_what_the_reply_is` in CI with `"Paris,\\n{ "`). The
check runs llama.cpp's own grammar sampler over the whole vocabulary after a prefix,
so it does not depend on what the model happens to sample.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.model

CITY = {"type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 12}}}


@pytest.fixture(scope="module")
def llama(gemma_path: Path) -> Iterator[Any]:
    import llama_cpp

    model = llama_cpp.Llama(str(gemma_path), vocab_only=True, verbose=False)
    yield model
    model.close()


def _allowed_texts(llama: Any, schema: dict[str, Any], prefix: str) -> list[bytes]:
    """The text of every token the schema's grammar allows after `prefix`."""
    import llama_cpp

    from cortex_plugins.llamacpp.grammar import make_grammar
    from cortex_plugins.llamacpp.schema import schema_grammar

    vocab = llama._model.vocab
    grammar = make_grammar(vocab, schema_grammar(schema)).take()
    try:
        for token in llama.tokenize(prefix.encode(), add_bos=False, special=False):
            llama_cpp.llama_sampler_accept(grammar, token)
        n_vocab = llama.n_vocab()
        data = (llama_cpp.llama_token_data * n_vocab)(
            *(llama_cpp.llama_token_data(id=i, logit=0.0, p=0.0) for i in range(n_vocab)))
        array = llama_cpp.llama_token_data_array(data=data, size=n_vocab, selected=-1,
                                                 sorted=False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        return [llama.detokenize([data[i].id]) for i in range(array.size)
                if math.isfinite(data[i].logit)]
    finally:
        llama_cpp.llama_sampler_free(grammar)


def _raw_controls(texts: list[bytes]) -> list[bytes]:
    return [t for t in texts if any(b < 0x20 or b == 0x7F for b in t)]


@pytest.mark.parametrize(("schema", "prefix"), [
    (CITY, '{"city": "Par'),
    ({"type": "array", "items": {"type": "string"}}, '["a'),
    ({"type": "object"}, '{"k": "v'),  # free-form values: the `string` primitive
    ({"type": "string", "pattern": "^a.{1,20}$"}, '"a'),  # a pattern's `.`
])
def test_no_token_with_a_raw_control_character_fits_inside_a_string(
        llama: Any, schema: dict[str, Any], prefix: str) -> None:
    allowed = _allowed_texts(llama, schema, prefix)
    assert len(allowed) > 1000, "the grammar allows next to nothing: the check proves nothing"
    assert any(t.isalpha() for t in allowed)
    assert _raw_controls(allowed) == []
    # An escaped newline is still a newline the reply may hold.
    assert b"\\" in allowed or any(t.startswith(b"\\") for t in allowed)


def test_whitespace_between_values_is_not_a_string_character(llama: Any) -> None:
    """The check above is not vacuous: outside strings, JSON's own grammar (json_object)
    lets a newline through, so the vocabulary does hold such tokens."""
    import llama_cpp

    from cortex_plugins.llamacpp.grammar import make_grammar
    from cortex_plugins.llamacpp.schema import grammar_text

    text = grammar_text({"type": "json_object"})
    assert text is not None
    grammar = make_grammar(llama._model.vocab, text).take()
    try:
        for token in llama.tokenize(b'{"a": 1,', add_bos=False, special=False):
            llama_cpp.llama_sampler_accept(grammar, token)
        newline = llama.tokenize(b"\n", add_bos=False, special=False)
        assert len(newline) == 1
        one = (llama_cpp.llama_token_data * 1)(
            llama_cpp.llama_token_data(id=newline[0], logit=0.0, p=0.0))
        array = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        assert math.isfinite(one[0].logit)
    finally:
        llama_cpp.llama_sampler_free(grammar)
