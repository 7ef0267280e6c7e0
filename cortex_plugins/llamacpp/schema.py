"""response_format to GBNF grammar text, bounded before any parser sees it.

llama-cpp-python's JSON-schema converter (a port of llama.cpp's) writes GBNF, which
llama.cpp parses when the grammar sampler is made. Neither bounds its work:
`maxLength: 10**9` builds a gigabyte string, `{0,30000}` in a pattern nests 30,000
groups and overflows the C++ parser's stack, an empty `enum` gives GBNF llama.cpp
refuses. So the schema is walked first (size, depth, repetition counts, local `$ref`s
only, nothing empty that can never match), the converter's literal escaping is fixed (it
leaves backslashes raw, so `{"const": "\\""}` made GBNF that does not parse), and the GBNF
is bounded again (size, group nesting, NUL) before llama.cpp gets it. Every refusal is
an InvalidRequest naming the field (`response_format`, or `tools` for a forced tool
call's schema: forced.py) and, where it can, the schema path.
"""

from __future__ import annotations

import json
from typing import Any

from cortex import InvalidRequest

__all__ = ["MAX_REPEAT", "MAX_SCHEMA_BYTES", "SchemaRefused", "grammar_text", "schema_grammar"]

MAX_SCHEMA_BYTES = 64 * 1024  # the schema as JSON
MAX_DEPTH = 64  # nested JSON objects and arrays in the schema
MAX_REPEAT = 1000  # minItems, maxItems, minLength, maxLength, {m,n}; llama.cpp stops at 1000
MAX_ENUM = 1000  # values of one enum
MAX_PROPERTIES = 256  # properties of one object (the converter's work grows with the square)
MAX_PATTERN = 1000  # characters of one pattern
MAX_PATTERN_GROUPS = 32  # nested groups in one pattern
MAX_GRAMMAR_BYTES = 256 * 1024  # the GBNF text
MAX_GRAMMAR_NESTING = 1100  # nested groups in the GBNF (the parser recurses per group)

_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_COUNTS = (("minItems", "maxItems"), ("minLength", "maxLength"))
_UNIONS = ("anyOf", "oneOf", "allOf")


class SchemaRefused(ValueError):
    """A schema that will not be turned into a grammar, and why; the caller names the
    field it came from."""


def _refuse(message: str) -> SchemaRefused:
    return SchemaRefused(message)


def _schema_of(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema asked for; None for any JSON object (`json_object`, no schema)."""
    if not isinstance(response_format, dict):
        raise _refuse("must be an object")
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema")  # llama-cpp-python's extension
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise _refuse("`json_schema` must be an object holding `schema`")
        schema = spec.get("schema")
    else:
        raise _refuse(f"type `{kind}` is not supported (text, json_object, json_schema)")
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise _refuse("the schema must be a JSON object")
    return schema


def _count(node: dict[str, Any], key: str, where: str) -> int | None:
    value = node.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_REPEAT:
        raise _refuse(f"`{key}` at {where} must be an integer from 0 to {MAX_REPEAT}")
    return value


def _check_keywords(node: dict[str, Any], where: str) -> None:
    """The keywords of one (sub)schema that the converter reads."""
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if isinstance(kind, list) and not kind:
        raise _refuse(f"`type` at {where} is an empty list: nothing can match it")
    for one in kinds:
        if one not in _TYPES:
            raise _refuse(f"unknown `type` {one!r} at {where}")
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list) or not values:
            raise _refuse(f"`enum` at {where} must be a non-empty list (an empty one "
                          "matches nothing)")
        if len(values) > MAX_ENUM:
            raise _refuse(f"`enum` at {where} has {len(values)} values; at most {MAX_ENUM}")
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        raise _refuse(f"the object at {where} has {len(properties)} properties; at most "
                      f"{MAX_PROPERTIES}")
    for key in _UNIONS:
        if key in node and (not isinstance(node[key], list) or not node[key]):
            raise _refuse(f"`{key}` at {where} must be a non-empty list of schemas")
    for low_key, high_key in _COUNTS:
        low = _count(node, low_key, where)
        high = _count(node, high_key, where)
        if low is not None and high is not None and high < low:
            raise _refuse(f"`{high_key}` {high} is below `{low_key}` {low} at {where}: "
                          "nothing can match it")
    if "pattern" in node:
        _check_pattern(node["pattern"], where)


def _subschemas(node: dict[str, Any], where: str) -> list[tuple[Any, str]]:
    """The (sub)schemas directly inside a schema, with their paths."""
    out: list[tuple[Any, str]] = []
    for key in ("properties", "$defs", "definitions"):
        table = node.get(key)
        if key in node and not isinstance(table, dict):
            raise _refuse(f"`{key}` at {where} must be an object")
        out += [(value, f"{where}/{key}/{name}") for name, value in (table or {}).items()]
    for key in ("items", "prefixItems", *_UNIONS):
        value = node.get(key)
        if isinstance(value, list):
            out += [(item, f"{where}/{key}/{i}") for i, item in enumerate(value)]
        elif value is not None:
            out.append((value, f"{where}/{key}"))
    extra = node.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        out.append((extra, f"{where}/additionalProperties"))
    return out


def _check_schema(schema: dict[str, Any]) -> None:
    """Walk the schema without recursion: depth, local $refs, then each subschema."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:  # every container: depth, and no $ref that would be fetched
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _refuse(f"the schema nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
                raise _refuse(f"`$ref` {str(ref)[:80]!r} is not supported: only local "
                              "references (#/...) are")
            stack += [(value, depth + 1) for value in node.values()]
        elif isinstance(node, list):
            stack += [(value, depth + 1) for value in node]
    schemas: list[tuple[Any, str]] = [(schema, "#")]
    while schemas:
        node, where = schemas.pop()
        if not isinstance(node, dict):
            raise _refuse(f"the schema at {where} must be an object")
        _check_keywords(node, where)
        schemas += _subschemas(node, where)


def _check_pattern(pattern: Any, where: str) -> None:
    """Bound a regular expression the way the converter reads it: its quantifiers
    `{m,n}` (times those of the groups they apply to) and its group nesting."""
    if not isinstance(pattern, str):
        raise _refuse(f"`pattern` at {where} must be a string")
    if len(pattern) > MAX_PATTERN:
        raise _refuse(f"`pattern` at {where} is longer than {MAX_PATTERN} characters")
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise _refuse(f"`pattern` at {where} must start with ^ and end with $")
    groups: list[int] = [1]  # the largest repetition product inside each open group
    last = 1  # that of the item a quantifier would apply to
    i = 1
    while i < len(pattern) - 1:
        c = pattern[i]
        if c == "\\":
            i, last = i + 2, 1
            continue
        if c == "[":
            i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            last = 1
        elif c == "(":
            groups.append(1)
            if len(groups) > MAX_PATTERN_GROUPS + 1:
                raise _refuse(f"`pattern` at {where} nests more than {MAX_PATTERN_GROUPS} "
                              "groups")
        elif c == ")":
            last = groups.pop() if len(groups) > 1 else 1
            groups[-1] = max(groups[-1], last)
        elif c == "{":
            end = pattern.find("}", i)
            bounds = pattern[i + 1:end if end > 0 else len(pattern)].split(",")
            times = max((int(b) for b in bounds if b.strip().isascii() and b.strip().isdigit()),
                        default=1)
            product = max(times, 1) * last
            if product > MAX_REPEAT:
                raise _refuse(f"`pattern` at {where} repeats up to {product} times (counting "
                              f"nested repetitions); at most {MAX_REPEAT}")
            groups[-1] = max(groups[-1], product)
            last = product
            i = end if end > 0 else len(pattern)
        elif c not in "*+?":  # those change the item before them, as {m,n} does
            last = 1
        i += 1


def _gbnf_nesting(text: str) -> int:
    """The deepest group nesting in GBNF, outside literals and character classes."""
    depth = deepest = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c == '"':
            quote = '"'
        elif c == "[":
            quote = "]"
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


# A character inside a JSON string: llama-cpp-python's converter lets control characters
# through raw (a newline, a NUL), which no JSON parser accepts; llama.cpp's own
# converter excludes them, as does this.
_JSON_CHAR = (r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | '
              r'"u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])')


def _convert(schema: dict[str, Any], rule: str) -> str:
    from llama_cpp.llama_grammar import DOT, PRIMITIVE_RULES, BuiltinRule, SchemaConverter

    json_char = BuiltinRule(_JSON_CHAR, [])

    class Converter(SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            escaped = (literal.replace("\\", "\\\\").replace('"', '\\"')
                       .replace("\n", "\\n").replace("\r", "\\r"))
            return f'"{escaped}"'

        def _add_primitive(self, name: str, rule: Any) -> str:
            strict = json_char if rule is PRIMITIVE_RULES["char"] else rule
            return str(super()._add_primitive(name, strict))

        def _add_rule(self, name: str, rule: str) -> str:
            # A pattern's `.` is written into a JSON string too.
            strict = _JSON_CHAR if name == "dot" and rule == DOT else rule
            return str(super()._add_rule(name, strict))

    converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(schema, "stdin")
    converter.visit(resolved, "" if rule == "root" else rule)
    text: str = converter.format_grammar()
    return text


def schema_grammar(schema: dict[str, Any], rule: str = "root") -> str:
    """GBNF for a JSON schema, its top rule named `rule`, or SchemaRefused saying why
    not. Pure Python, bounded work; run it off the event loop anyway."""
    try:
        encoded = json.dumps(schema, ensure_ascii=False)
    except ValueError as exc:  # NaN, Infinity
        raise _refuse(f"the schema is not JSON: {exc}") from None
    if len(encoded.encode("utf-8", "surrogatepass")) > MAX_SCHEMA_BYTES:
        raise _refuse(f"the schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    _check_schema(schema)
    try:
        text = _convert(json.loads(encoded), rule)  # a copy: resolving $refs rewrites them
    except Exception as exc:  # the converter's asserts and lookups, on schemas it cannot read
        reason = str(exc) or type(exc).__name__
        raise _refuse(f"the schema cannot be turned into a grammar: {reason[:300]}") from None
    if len(text) > MAX_GRAMMAR_BYTES:
        raise _refuse(f"the schema makes a grammar larger than {MAX_GRAMMAR_BYTES // 1024} KiB")
    if "\x00" in text:
        raise _refuse("the schema holds a NUL character, which a grammar cannot")
    if _gbnf_nesting(text) > MAX_GRAMMAR_NESTING:
        raise _refuse(f"the schema makes a grammar nested deeper than {MAX_GRAMMAR_NESTING}")
    return text


def grammar_text(response_format: Any) -> str | None:
    """GBNF for a response_format (None for plain text), or an InvalidRequest saying why
    it cannot be served."""
    if response_format is None or (isinstance(response_format, dict)
                                   and response_format.get("type") in (None, "text")):
        return None
    try:
        schema = _schema_of(response_format)
        if schema is None:
            from llama_cpp.llama_grammar import JSON_GBNF

            return str(JSON_GBNF)
        return schema_grammar(schema)
    except SchemaRefused as exc:
        raise InvalidRequest(f"response_format: {exc}", param="response_format") from None
