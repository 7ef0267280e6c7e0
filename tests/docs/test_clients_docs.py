"""docs/clients.md is true: each client's settings are what `cortex launch` gives it,
and what the page says of Claude Code (its version, the names it asks for, its stream
idle floor) is what the pinned binary holds (those checks skip without the binary:
scripts/test_packages.sh installs it)."""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import pytest

from cortex.cli.launch import DEFAULT_URL, PACKAGES, claude_launch, codex_launch
from cortex.defaults import BUNDLED_GEMMA

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "clients.md").read_text()
CLAUDE = ROOT / ".ci" / "node" / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / \
    "claude.exe"
PINS = dict(re.findall(r"^(CLAUDE_CODE|CODEX)=(\S+)$",
                       (ROOT / "scripts" / "test_packages.sh").read_text(), re.M))


def section(title: str) -> str:
    """The text under a `## ` heading that starts with `title`, to the next one."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"no section `{title}` in docs/clients.md"
    return match[1]


def test_claude_codes_environment_is_what_launch_sets() -> None:
    exports = dict(re.findall(r"^export (\w+)=(\S*)", section("Claude Code"), re.M))
    launched = claude_launch("http://gateway:31313", "anything", None, []).env
    assert exports == launched
    assert not exports["ANTHROPIC_BASE_URL"].endswith("/v1")


def test_launch_with_a_model_sets_every_model_variable_the_page_names() -> None:
    launch = section("`cortex launch`")
    named = set(re.findall(r"`((?:ANTHROPIC|CLAUDE_CODE)_\w*MODEL)`", launch))
    env = claude_launch(DEFAULT_URL, "k", "qwen", []).env
    assert named == {name for name, value in env.items() if value == "qwen"}
    assert f"`{DEFAULT_URL}`" in launch


def test_codexs_flags_are_what_launch_gives() -> None:
    argv = codex_launch("http://gateway:31313", "k", "qwen", ["exec", "hi"]).argv
    shown = re.search(r"```sh\n\s*(codex .*?)\n\s*```", section("`cortex launch`"), re.S)
    assert shown, "no codex command in the launch section"
    words = re.findall(r"'[^']*'|\"[^\"]*\"|\S+", shown[1].replace("\\\n", " "))
    assert [w.strip("'") if w.startswith("'") else w.strip('"') for w in words] == \
        ["codex", *argv]


def test_the_install_hints_name_the_packages_launch_names() -> None:
    for package in PACKAGES.values():
        assert f"npm install -g {package}" in section("`cortex launch`")


def test_the_bundled_profile_carries_the_documented_pattern() -> None:
    assert "`claude-*`" in section("Claude Code") and "claude-*" in BUNDLED_GEMMA.aliases


def test_the_tested_version_is_the_pinned_one() -> None:
    tested = set(re.findall(r"Claude Code (\d+\.\d+\.\d+)", DOC))
    assert tested == {PINS["CLAUDE_CODE"]}


@pytest.fixture(scope="module")
def binary() -> bytes:
    if not CLAUDE.exists():
        pytest.skip("no claude CLI: run scripts/test_packages.sh")
    with CLAUDE.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return bytes(m)


def test_the_names_it_asks_for_are_in_the_binary(binary: bytes) -> None:
    names = re.findall(r"2\.1\.x asks for (`[^.]*)", DOC)[0]
    for name in re.findall(r"`(claude-[\w-]+)`", names):
        assert f'"{name}"'.encode() in binary, name


def test_the_stream_idle_floor_is_the_binarys(binary: bytes) -> None:
    """The watchdog's timeout is the larger of CLAUDE_STREAM_IDLE_TIMEOUT_MS (or its
    setting) and a floor: 300 s in 2.1.332, where older notes say 65 s."""
    floor = re.search(rb"return Math\.max\(\w+\?\?0,(\d+)\)\}function \w+\(\)\{let \w+="
                      rb"\w+\.CLAUDE_STREAM_IDLE_TIMEOUT_MS", binary)
    assert floor, "the floor is no longer where 2.1.332 has it: read the binary again"
    seconds = int(floor[1]) // 1000
    assert f"timeout is at least {seconds} s" in " ".join(section("Claude Code").split())
