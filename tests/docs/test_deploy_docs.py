"""docs/deploy.md stays true to deploy/ and rpm/: it lists every file under deploy/, its
GPU table is the spec's backends, its DNS discovery config has the manifests' keys,
its links resolve, and README and operations.md point to it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DEPLOY = (DOCS / "deploy.md").read_text()
SPEC = (ROOT / "rpm" / "cortex.spec").read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_every_file_under_deploy_is_listed() -> None:
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "deploy").rglob("*")
                   if p.is_file())
    assert files
    missing = [f for f in files if f"`{f}`" not in DEPLOY]
    assert not missing, f"docs/deploy.md does not list {missing}"


def test_the_gpu_table_is_the_rpms_backends() -> None:
    match = re.search(r"^%global backends (.+)$", SPEC, re.M)
    assert match
    rows = section(DEPLOY, "llama.cpp for your GPUs")
    for item in match.group(1).split():
        name, arch = item.split(":", 1)
        [row] = [line for line in rows.splitlines() if f"`cortex-neuron-{name}`" in line]
        if not arch.startswith("-D"):
            assert f"| {arch} |" in row and f"`CUDA_ARCHITECTURES={arch}`" in row, row


def test_the_dns_discovery_config_has_the_manifests_keys() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", section(DEPLOY, "A fleet in DNS"), re.S)
    [documented] = [tomllib.loads(b)["discovery"] for b in blocks if "[[discovery]]" in b]
    manifests = tomllib.loads((ROOT / "deploy/kubernetes/base/cortex.toml").read_text())
    for ours, theirs in zip(documented, manifests["discovery"], strict=True):
        assert ours.keys() == theirs.keys()
        assert ours["options"].keys() == theirs["options"].keys()
        assert ours["source"] == theirs["source"] == "dns"


def test_links_to_and_from_deploy_md_resolve() -> None:
    assert "](docs/deploy.md)" in (ROOT / "README.md").read_text()
    assert "](deploy.md)" in (DOCS / "operations.md").read_text()
    for doc in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", doc.read_text()):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            path = (doc.parent / target).resolve() if target else doc
            assert path.exists(), f"{doc.name}: link to {target} does not exist"
            if anchor and path.suffix == ".md" and (path.name == "deploy.md"
                                                    or doc.name == "deploy.md"):
                headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{doc.name}: #{anchor}"
