"""Chat messages to a prompt: a Jinja chat template, or one of llama.cpp's built-in formats.

Which template applies is decided once at load: the profile's `chat_template` or
`chat_format` (an explicit override), then the GGUF's own template, then the
`tokenizer_config.json` template found next to a HuggingFace GGUF. None of these
means chat requests get a clear 400 while text completions still work.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

from cortex import ChatMessage, Tool, UnsupportedFeature, did_you_mean

__all__ = ["CHAT_FORMATS", "BuiltinRenderer", "JinjaRenderer", "Prompt", "Renderer",
           "builtin_formats"]

#: llama.cpp's built-in chat formats (`chat_format = NAME`), as llama-cpp-python 0.3.36
#: lists them (`llama_chat_builtin_templates`, from LLM_CHAT_TEMPLATES in llama.cpp's
#: src/llama-chat.cpp). Written out so a gateway without llama.cpp can check profiles;
#: tests/plugins/test_engine.py compares it with the installed llama.cpp's own list.
CHAT_FORMATS = (
    "bailing", "bailing-think", "bailing2", "chatglm3", "chatglm4", "chatml", "command-r",
    "deepseek", "deepseek-ocr", "deepseek2", "deepseek3", "exaone-moe", "exaone3",
    "exaone4", "falcon3", "gemma", "gigachat", "glmedge", "gpt-oss", "granite",
    "granite-4.0", "granite-4.1", "grok-2", "hunyuan-dense", "hunyuan-moe", "hunyuan-vl",
    "kimi-k2", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "llama3",
    "llama4", "megrez", "minicpm", "mistral-v1", "mistral-v3", "mistral-v3-tekken",
    "mistral-v7", "mistral-v7-tekken", "monarch", "openchat", "orion", "pangu-embedded",
    "phi3", "phi4", "rwkv-world", "seed_oss", "smolvlm", "solar-open", "vicuna",
    "vicuna-orca", "yandex", "zephyr",
)


def unknown_format(name: str, known: tuple[str, ...] | list[str] = CHAT_FORMATS) -> str | None:
    """Why `name` is no chat format llama.cpp knows, with the nearest one; None if it is."""
    if name in known:
        return None
    return (f"unknown chat format `{name}`{did_you_mean(name, known)}; llama.cpp knows: "
            f"{', '.join(known)} (or give a chat_template)")


class Prompt:
    __slots__ = ("add_bos", "stop", "text")

    def __init__(self, text: str, stop: list[str], add_bos: bool) -> None:
        self.text = text
        self.stop = stop
        self.add_bos = add_bos


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": c.type,
             "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
            for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _arguments(raw: str) -> Any:
    # HF templates index into arguments as a mapping; OpenAI sends them as a JSON string.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class Renderer:
    description: str = ""

    def render(self, messages: list[ChatMessage], tools: list[Tool] | None,
               add_generation_prompt: bool = True) -> Prompt:
        raise NotImplementedError


class JinjaRenderer(Renderer):
    """A HuggingFace-style Jinja template, rendered by llama-cpp-python's sandboxed formatter."""

    def __init__(self, template: str, *, bos_token: str, eos_token: str, origin: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.description = origin
        try:
            self._formatters = {
                flag: Jinja2ChatFormatter(template=template, bos_token=bos_token,
                                          eos_token=eos_token, add_generation_prompt=flag)
                for flag in (True, False)}
        except Exception as exc:  # jinja2's TemplateSyntaxError and the like
            raise UnsupportedFeature(f"the chat template ({origin}) does not parse: "
                                     f"{exc}") from None

    def render(self, messages: list[ChatMessage], tools: list[Tool] | None,
               add_generation_prompt: bool = True) -> Prompt:
        import msgspec

        tool_dicts = msgspec.to_builtins(tools) if tools else None
        try:
            formatter: Any = self._formatters[add_generation_prompt]
            result = formatter(messages=[_message_dict(m) for m in messages], tools=tool_dicts)
        except Exception as exc:  # jinja2 raises its own errors, e.g. raise_exception()
            raise UnsupportedFeature(f"the chat template rejected the messages: {exc}") from None
        stop = result.stop if isinstance(result.stop, list) else \
            ([result.stop] if result.stop else [])
        return Prompt(result.prompt, stop, add_bos=not result.added_special)


def builtin_formats() -> list[str]:
    """Names of llama.cpp's built-in chat formats (gemma, chatml, llama3, ...)."""
    import llama_cpp

    count = llama_cpp.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    llama_cpp.llama_chat_builtin_templates(names, count)
    return sorted(n.decode() for n in names if n)


class BuiltinRenderer(Renderer):
    """One of llama.cpp's built-in formats, by name; these take no tools."""

    def __init__(self, name: str) -> None:
        wrong = unknown_format(name, builtin_formats())
        if wrong is not None:
            raise UnsupportedFeature(wrong)
        self.name = name
        self.description = f"chat_format {name}"

    def render(self, messages: list[ChatMessage], tools: list[Tool] | None,
               add_generation_prompt: bool = True) -> Prompt:
        import llama_cpp

        if tools:
            raise UnsupportedFeature(
                f"chat_format `{self.name}` cannot describe tools; give the profile a "
                "chat_template that does")
        texts = [(m.role.encode(), m.text().encode()) for m in messages]
        chat = (llama_cpp.llama_chat_message * len(texts))(
            *(llama_cpp.llama_chat_message(role=r, content=c) for r, c in texts))
        size = 2 * sum(len(r) + len(c) for r, c in texts) + 1024
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(
                self.name.encode(), chat, len(texts), add_generation_prompt, buf, size)
            if n < 0:
                raise UnsupportedFeature(f"chat_format `{self.name}` cannot render these messages")
            if n <= size:
                return Prompt(buf.raw[:n].decode("utf-8", "replace"), [], add_bos=True)
            size = n + 1
        raise UnsupportedFeature("chat template output did not fit its buffer")
