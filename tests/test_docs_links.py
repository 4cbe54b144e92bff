"""Every relative link in README.md, examples/ and docs/ leads to a file (and heading) that exists,
and no page sends a user to the vector folder beside the development checkout: a clone is
self-contained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .paths import REPO

PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "examples").glob("*.md")]
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = ("http://", "https://", "mailto:")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, in_fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^#{1,6}\s+(.*)$", line)):
            anchors.add(_slug(m[1]))
    return anchors


def _links(page: Path) -> list[tuple[int, str]]:
    out, in_fence = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not in_fence:
            out += [(number, m["target"]) for m in LINK.finditer(line)]
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for number, target in _links(page):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        name = f"{page.relative_to(REPO)}:{number}: {target}"
        if not resolved.is_relative_to(REPO):
            broken.append(f"{name} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{name} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{name} (no heading #{anchor})")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_points_outside_the_clone(page: Path) -> None:
    text = page.read_text()
    # Spelled in parts so that this file does not itself name the folder it forbids.
    beside = "/".join(("..", "sha" + "red"))
    assert beside not in text and "/work/" + "sha" + "red" not in text


def test_the_pages_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"README.md", "docs/cli.md", "docs/verifier.md", "examples/README.md"} <= names


def test_the_checker_finds_what_is_broken(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# Top heading\n[ok](#top-heading) [bad](missing.md) ![img](x.png)\n"
        "```\n[in a fence](nowhere.md)\n```\n[web](https://example.com)\n"
    )
    assert _links(page) == [(2, "#top-heading"), (2, "missing.md"), (6, "https://example.com")]
    assert _anchors(page) == {"top-heading"}
    assert _slug("Building (`eif build`)") == "building-eif-build"
