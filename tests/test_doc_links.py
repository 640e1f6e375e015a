"""The relative links of the READMEs and docs/ name files that exist and headings that are there."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(text: str) -> Iterator[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as '-', repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+)$", FENCE.sub("", text), re.M):
        words = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", words).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def broken_links(doc: Path) -> list[str]:
    broken = []
    for link in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", link):    # http(s), mailto: not ours to check offline
            continue
        path, _, fragment = link.partition("#")
        target = (doc.parent / path) if path else doc
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in set(anchors(target.read_text())):
            broken.append(f"{link}: no such heading")
    return broken


def test_the_docs_links_resolve():
    assert {doc.relative_to(ROOT).as_posix(): broken_links(doc) for doc in DOCS} == {
        doc.relative_to(ROOT).as_posix(): [] for doc in DOCS}


def test_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Installing it\n\n## Installing it\n")
    doc = tmp_path / "a.md"
    doc.write_text("[x](b.md#installing-it) [y](b.md#installing-it-1) [z](b.md#setup) [w](c.md)\n"
                   "```\n[v](c.md)\n```\n[u](https://example.org/none)\n")
    assert broken_links(doc) == ["b.md#setup: no such heading", "c.md: no such file"]
