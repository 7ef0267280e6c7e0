"""llama.cpp grammar samplers, made and checked before a request is queued.

llama.cpp answers NULL for a grammar it cannot parse (a NULL in a sampler chain is a
segfault) and says why only in its log. So grammars are made on a worker thread, and
NULL becomes a 400 carrying the log's reason. (How a grammar is then sampled safely:
sampling.py.)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator
from typing import Any

from cortex import InvalidRequest

__all__ = ["Grammar", "LlamaLog", "llama_log", "make_grammar"]


class LlamaLog:
    """llama.cpp's log callback, with lines captured per thread while asked.

    The callback is process-wide in llama.cpp, hence one instance per process
    (`llama_log()`); lines not captured go to llama-cpp-python's own callback, so its
    `verbose` setting still decides what reaches stderr.
    """

    def __init__(self) -> None:
        import llama_cpp
        from llama_cpp import _logger

        self._local = threading.local()
        forward = _logger.llama_log_callback

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: Any) -> None:
            lines = getattr(self._local, "lines", None)
            if lines is None:
                forward(level, text, user_data)
            else:
                lines.append(text.decode("utf-8", "replace"))

        self._callback = callback  # llama.cpp holds only a pointer: keep it alive
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Lines llama.cpp logs on this thread meanwhile (other threads' still go out)."""
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = None


@functools.cache
def llama_log() -> LlamaLog:
    return LlamaLog()


class Grammar:
    """A llama.cpp grammar sampler, freed here unless a sampler chain takes it; `param`
    is the request field it came from."""

    def __init__(self, pointer: Any, param: str = "response_format") -> None:
        self._pointer = pointer
        self.param = param
        self._lock = threading.Lock()

    def take(self) -> Any:
        """The sampler, now owned by the caller (a chain frees what it holds); None once
        taken or closed."""
        with self._lock:
            pointer, self._pointer = self._pointer, None
        return pointer

    def close(self) -> None:
        pointer = self.take()
        if pointer:
            import llama_cpp

            llama_cpp.llama_sampler_free(pointer)

    def __del__(self) -> None:  # a request cancelled while its grammar was being made
        self.close()


def make_grammar(vocab: Any, text: str, param: str = "response_format") -> Grammar:
    """A grammar sampler for GBNF `text` (rule `root`); InvalidRequest naming `param`
    (the field the grammar came from), with llama.cpp's reason, where it refuses.
    Blocking: call it off the event loop."""
    import llama_cpp

    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{param}: the schema is not valid UTF-8: {exc}",
                             param=param) from None
    with llama_log().capture() as lines:
        pointer = llama_cpp.llama_sampler_init_grammar(vocab, encoded, b"root")
    if not pointer:
        reason = "; ".join(line.strip() for line in lines if line.strip()) or "no reason given"
        raise InvalidRequest(f"{param}: llama.cpp cannot use the grammar made from "
                             f"the schema: {reason}", param=param)
    return Grammar(pointer, param)
