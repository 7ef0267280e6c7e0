"""The chat formats a gateway checks profiles against (without llama.cpp) are the ones
the installed llama.cpp knows: a format added or renamed upstream shows here."""

from __future__ import annotations

import pytest

from cortex import ModelProfile
from cortex_plugins.llamacpp import LlamaCppHarness
from cortex_plugins.llamacpp.render import CHAT_FORMATS, builtin_formats

pytest.importorskip("llama_cpp")


def test_the_written_out_list_is_llama_cpp_s_own() -> None:
    assert sorted(CHAT_FORMATS) == builtin_formats()


def test_a_misspelt_format_is_refused_with_the_nearest_one() -> None:
    assert LlamaCppHarness.check_profile(ModelProfile(id="m", source="x", chat_format="gemma")
                                         ) == []
    [(key, reason)] = LlamaCppHarness.check_profile(
        ModelProfile(id="m", source="x", chat_format="lama3"))
    assert key == "chat_format"
    assert reason.startswith("unknown chat format `lama3` (did you mean `llama3`?)"), reason
