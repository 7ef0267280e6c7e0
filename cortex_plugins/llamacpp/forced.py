"""A forced `tool_choice` as a grammar: the reply must be a tool call, whatever the model.

`"required"` allows a call to any of the request's tools, `{"type": "function",
"function": {"name": X}}` a call to X only; either way the reply is exactly one call,
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the convention tools.py
parses and the bundled template teaches), its arguments matching the tool's
`parameters` schema. The schema goes through the same bounds as a response_format
schema (schema.py), after its annotations (descriptions, titles, examples) are dropped:
they constrain nothing, and agents' tool schemas are mostly prose.
"""

from __future__ import annotations

from typing import Any

from cortex import InvalidRequest, Tool

from .schema import SchemaRefused, schema_grammar

__all__ = ["forced_tools", "tool_call_grammar"]

_ANNOTATIONS = frozenset({"description", "title", "examples", "$comment", "$schema",
                          "default", "deprecated", "readOnly", "writeOnly"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


def forced_tools(tools: list[Tool] | None, tool_choice: Any) -> list[Tool] | None:
    """The tools a reply must call one of, or None when `tool_choice` forces nothing
    (absent, "auto", "none"); InvalidRequest for a choice that cannot be met."""
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        name = None
    elif isinstance(tool_choice, dict) and tool_choice.get("type") == "function" and \
            isinstance(tool_choice.get("function"), dict) and \
            isinstance(tool_choice["function"].get("name"), str):
        name = tool_choice["function"]["name"]
    else:
        raise InvalidRequest('tool_choice must be "none", "auto", "required" or '
                             '{"type": "function", "function": {"name": ...}}',
                             param="tool_choice")
    if not tools:
        raise InvalidRequest("tool_choice asks for a tool call, but the request has no tools",
                             param="tool_choice")
    chosen = [t for t in tools if name is None or t.function.name == name]
    if not chosen:
        raise InvalidRequest(f"tool_choice names `{name}`, which is not among the request's "
                             "tools", param="tool_choice")
    return chosen


def _pruned(schema: Any, *, mapping: bool = False) -> Any:
    """The schema without annotation keywords (a property named `description` stays)."""
    if isinstance(schema, list):
        return [_pruned(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if mapping:
        return {name: _pruned(value) for name, value in schema.items()}
    return {key: _pruned(value, mapping=key in _SCHEMA_MAPS) for key, value in schema.items()
            if key not in _ANNOTATIONS}


def _call_schema(tool: Tool) -> dict[str, Any]:
    parameters = tool.function.parameters
    arguments = _pruned(parameters) if parameters else {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": tool.function.name},
                                             "arguments": arguments},
            "required": ["name", "arguments"]}


def tool_call_grammar(tools: list[Tool]) -> str:
    """GBNF for one `<tool_call>` block calling one of `tools`; InvalidRequest (param
    `tools`) for parameters schemas that cannot be served."""
    schemas = [_call_schema(t) for t in tools]
    try:
        calls = schema_grammar(schemas[0] if len(schemas) == 1 else {"anyOf": schemas},
                               rule="call")
    except SchemaRefused as exc:
        raise InvalidRequest(f"tools: a forced call's parameters schema: {exc}",
                             param="tools") from None
    return f'{calls}\nroot ::= "<tool_call>" call "</tool_call>"\n'
