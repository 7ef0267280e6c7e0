"""`hf://owner/repo[@rev]/file.gguf` and `hf://owner/repo[@rev]:PATTERN`: a model on the
HuggingFace hub, listed, picked, downloaded into the hub cache (or found there when the
hub cannot be reached or HF_HUB_OFFLINE is set), with a chat template for GGUFs that
carry none. Blocking: the neuron calls it from a worker thread.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from cortex.config import NeuronConfig
from cortex.errors import InvalidRequest, NotFound, PermissionDenied, UpstreamError
from cortex.harness import ResolvedModel
from cortex.sources import HF_SOURCE

from .shards import group_models, split_paths, total_bytes

__all__ = ["INSTALL_HINT", "HubSource", "hf_cache_dir"]

logger = logging.getLogger("cortex.neuron.sources")

INSTALL_HINT = "pip install 'cortex[neuron]'"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hf_cache_dir(config: NeuronConfig) -> str:
    """The hub cache this neuron uses, read at call time so a changed environment counts.

    Precedence: neuron.toml's `hf_cache`, then HF_HUB_CACHE, then HF_HOME/hub, then
    huggingface_hub's own default (which that library fixed when it was imported).
    """
    if config.hf_cache:
        return os.path.expanduser(config.hf_cache)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@dataclass
class _Listing:
    files: list[str]
    revision: str | None  # what to download: the commit when known, so shards agree
    offline: bool


class HubSource:
    """One `hf://` resolution: list the repo, pick files, fetch them and a chat template."""

    def __init__(self, config: NeuronConfig, source: str) -> None:
        match = HF_SOURCE.match(source.removeprefix("hf://"))
        if match is None:
            raise InvalidRequest(
                f"`{source}` is not a hub source: use hf://owner/repo/file.gguf or "
                "hf://owner/repo:Q4_K_M (optionally hf://owner/repo@revision:...)")
        try:
            importlib.import_module("huggingface_hub")
        except ImportError:
            raise InvalidRequest(
                f"`{source}` needs the huggingface_hub package: {INSTALL_HINT}") from None
        self.source = source
        self.repo: str = match["repo"]
        self.revision: str | None = match["rev"]
        self.file: str | None = match["file"]
        self.pattern: str = match["pattern"] or ""
        self.cache = hf_cache_dir(config)

    def resolve(self) -> ResolvedModel:
        listing = self._list()
        wanted = self._pick(listing.files)
        files = [self._download(name, listing) for name in wanted]
        at = f"@{self.revision}" if self.revision else ""
        resolved = ResolvedModel(files=files, total_bytes=total_bytes(files),
                                 origin=f"hf://{self.repo}{at}/{wanted[0]}")
        self._add_chat_template(resolved, listing)
        return resolved

    def _list(self) -> _Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if _offline():
            return self._list_cached("HF_HUB_OFFLINE is set")
        try:
            info = HfApi().model_info(self.repo, revision=self.revision)
        except GatedRepoError:
            raise self._gated() from None
        except RepositoryNotFoundError:
            raise NotFound(
                f"hub repo `{self.repo}` not found (if it is private or gated, set HF_TOKEN "
                "on the neuron)") from None
        except RevisionNotFoundError:
            raise NotFound(f"hub repo `{self.repo}` has no revision `{self.revision}`") from None
        except HfHubHTTPError as exc:
            raise UpstreamError(f"listing hub repo `{self.repo}` failed: {exc}") from None
        except _connection_errors() as exc:
            logger.warning("hub unreachable (%s); using the local cache %s", exc, self.cache)
            return self._list_cached("the hub is unreachable")
        files = [s.rfilename for s in info.siblings or []]
        return _Listing(files=files, revision=info.sha or self.revision, offline=False)

    def _list_cached(self, why: str) -> _Listing:
        """List the cached snapshot, standing in for the hub API's listing of the repo."""
        repo_dir = os.path.join(self.cache, "models--" + self.repo.replace("/", "--"))
        revision = self.revision or "main"
        commit: str | None = revision if _COMMIT_RE.match(revision) else None
        if commit is None:
            try:
                with open(os.path.join(repo_dir, "refs", revision), encoding="utf-8") as ref:
                    commit = ref.read().strip()
            except OSError:
                pass
        snapshot = os.path.join(repo_dir, "snapshots", commit or "")
        if not commit or not os.path.isdir(snapshot):
            raise NotFound(
                f"hub repo `{self.repo}` (revision {revision}) is not in the local cache "
                f"{self.cache}, and {why}")
        files = sorted(
            os.path.relpath(os.path.join(root, name), snapshot).replace(os.sep, "/")
            for root, _, names in os.walk(snapshot) for name in names)
        return _Listing(files=files, revision=commit, offline=True)

    def _pick(self, files: list[str]) -> list[str]:
        """Repo paths of the model, first shard first."""
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        if self.file is not None:
            if self.file not in files:
                raise self._not_found(f"has no file `{self.file}`", ggufs)
            model = split_paths(self.file) or [self.file]
            if model[0] != self.file:
                raise InvalidRequest(f"`{self.file}` is not the first shard of its split model")
        else:
            models = group_models(
                f for f in ggufs if "mmproj" not in f.rsplit("/", 1)[-1].lower())
            matches = _match(self.pattern, models)
            if not matches:
                what = f"has no GGUF matching `{self.pattern}`" if self.pattern else "has no GGUF"
                raise self._not_found(what, ggufs)
            if len(matches) > 1:
                names = ", ".join(m[0] for m in matches)
                hint = f"`{self.pattern}` matches" if self.pattern else "has"
                raise InvalidRequest(
                    f"hub repo `{self.repo}` {hint} several models: {names}; name one with "
                    f"hf://{self.repo}/FILE or a narrower pattern")
            model = split_paths(matches[0][0]) or matches[0]
        missing = [name for name in model if name not in files]
        if missing:
            raise self._not_found(
                f"has an incomplete split `{model[0]}` (missing {', '.join(missing)})", ggufs)
        return model

    def _not_found(self, what: str, ggufs: list[str]) -> NotFound:
        found = ", ".join(ggufs) if ggufs else "none"
        return NotFound(f"hub repo `{self.repo}` {what} (GGUF files found: {found})")

    def _gated(self) -> PermissionDenied:
        return PermissionDenied(
            f"hub repo `{self.repo}` is gated: accept its terms on the hub and set HF_TOKEN "
            "on the neuron")

    def _download(self, filename: str, listing: _Listing) -> str:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        failed: tuple[type[BaseException], ...] = (HfHubHTTPError, *_connection_errors())
        try:
            path = hf_hub_download(self.repo, filename, revision=listing.revision,
                                   cache_dir=self.cache, local_files_only=listing.offline)
        except LocalEntryNotFoundError:
            raise NotFound(
                f"`{filename}` from hub repo `{self.repo}` is not in the local cache "
                f"{self.cache} and the hub cannot be reached") from None
        except GatedRepoError:
            raise self._gated() from None
        except (RepositoryNotFoundError, EntryNotFoundError):
            raise NotFound(f"`{filename}` not found in hub repo `{self.repo}`") from None
        except failed as exc:
            raise UpstreamError(
                f"downloading `{filename}` from hub repo `{self.repo}` failed: {exc}") from None
        return str(path)

    def _add_chat_template(self, resolved: ResolvedModel, listing: _Listing) -> None:
        """Fallback template for GGUFs that carry none: the repo's, else its base repo's."""
        from huggingface_hub import hf_hub_download

        candidates = [(self.repo, listing.revision)]
        base = re.sub(r"-gguf$", "", self.repo, flags=re.IGNORECASE)
        if base != self.repo:
            candidates.append((base, None))
        for repo, revision in candidates:
            resolved.template_repos_tried.append(repo)
            if repo == self.repo and "tokenizer_config.json" not in listing.files:
                continue  # the listing already says it has none
            try:
                path = hf_hub_download(repo, "tokenizer_config.json", revision=revision,
                                       cache_dir=self.cache, local_files_only=listing.offline)
                with open(str(path), encoding="utf-8") as f:
                    template = _chat_template(json.load(f))
            except Exception as exc:  # a missing fallback is normal: most GGUFs carry one
                logger.debug("no tokenizer_config.json from %s: %r", repo, exc)
                continue
            if template:
                resolved.chat_template = template
                logger.debug("chat template for %s taken from %s", self.source, repo)
                return


def _chat_template(config: Any) -> str | None:
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _match(pattern: str, models: list[list[str]]) -> list[list[str]]:
    """Models with a file matching `pattern` as a whole token, else as a substring.

    Token matching keeps `Q4_0` from also picking `Q4_0_4_4`, and `Q4_K_S` from
    `IQ4_K_S`; the substring fallback still lets a loose pattern such as `Q4_K` find
    (and, when several match, list) its candidates.
    """
    if not pattern:
        return models
    needle = pattern.lower()
    token = re.compile(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9_])")
    for found in ([m for m in models if any(token.search(p.lower()) for p in m)],
                  [m for m in models if any(needle in p.lower() for p in m)]):
        if found:
            return found
    return []


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the neuron honours later changes.
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the hub cannot be reached", whichever HTTP client this hub version uses
    (requests before 1.0, httpx in 1.x, httpx2 after)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("requests", ("ConnectionError", "Timeout")),
                               ("httpx", ("TransportError",)),
                               ("httpx2", ("TransportError",))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors.extend(getattr(module, n) for n in names if hasattr(module, n))
    return tuple(errors)
