"""Chat templates we write ourselves, for models whose own cannot describe tools.

`GEMMA_TOOLS` speaks Gemma's turn markers (`<start_of_turn>user` / `model`,
`<end_of_turn>`; Gemma has no system role, so system messages open the first user turn,
as Gemma's own template does) and adds tools in the Hermes convention that the
llama.cpp harness parses back (cortex_plugins/llamacpp/tools.py):

- the tools are listed in that first turn, one compact JSON line each (name,
  description, parameters schema), with the instruction to answer with
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` lines and nothing else;
- an assistant message's earlier tool calls are rendered back in that form, and tool
  results go back as a user turn of `<tool_response>` blocks (consecutive results share
  one turn).

Every piece of output is a Jinja expression and every tag trims its whitespace, so the
layout of the source below never leaks into prompts.
"""

from __future__ import annotations

__all__ = ["GEMMA_TOOLS"]

GEMMA_TOOLS = """\
{{- bos_token -}}
{%- set ns = namespace(preamble="") -%}
{%- for m in messages if m.role in ["system", "developer"] -%}
  {%- set ns.preamble = ns.preamble + m.content + "\\n\\n" -%}
{%- endfor -%}
{%- if tools -%}
  {%- set ns.preamble = ns.preamble + "# Tools\\n\\nYou can call the functions below, one \
JSON line each (name, description, JSON schema of the arguments):\\n" -%}
  {%- for t in tools -%}
    {%- set f = {"name": t.function.name, "description": t.function.description or "",
                 "parameters": t.function.parameters or {}} -%}
    {%- set ns.preamble = ns.preamble + (f | tojson(separators=(",", ":"))) + "\\n" -%}
  {%- endfor -%}
  {%- set ns.preamble = ns.preamble + "\\nTo call functions, answer with one line per \
call and no other text:\\n<tool_call>{\\"name\\": \\"function name\\", \\"arguments\\": \
{...}}</tool_call>\\nEach result comes back inside <tool_response></tool_response>.\
\\n\\n" -%}
{%- endif -%}
{%- set turns = messages | rejectattr("role", "in", ["system", "developer"]) | list -%}
{%- if ns.preamble and (not turns or turns[0].role != "user") -%}
  {{- "<start_of_turn>user\\n" + ns.preamble | trim + "<end_of_turn>\\n" -}}
  {%- set ns.preamble = "" -%}
{%- endif -%}
{%- for m in turns -%}
  {%- if m.role == "tool" -%}
    {%- if loop.first or loop.previtem.role != "tool" -%}
      {{- "<start_of_turn>user\\n" -}}
    {%- endif -%}
    {{- "<tool_response>\\n" + (m.content or "") + "\\n</tool_response>\\n" -}}
    {%- if loop.last or loop.nextitem.role != "tool" -%}
      {{- "<end_of_turn>\\n" -}}
    {%- endif -%}
  {%- elif m.role == "assistant" -%}
    {{- "<start_of_turn>model\\n" + (m.content or "") -}}
    {%- for c in m.tool_calls or [] -%}
      {%- set call = {"name": c.function.name, "arguments": c.function.arguments} -%}
      {{- ("\\n" if m.content or not loop.first else "") + "<tool_call>" + (call | tojson)
          + "</tool_call>" -}}
    {%- endfor -%}
    {{- "<end_of_turn>\\n" -}}
  {%- else -%}
    {{- "<start_of_turn>user\\n" + ns.preamble + (m.content or "") + "<end_of_turn>\\n" -}}
    {%- set ns.preamble = "" -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- "<start_of_turn>model\\n" -}}
{%- endif -%}
"""
