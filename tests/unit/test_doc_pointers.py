"""Every pointer a comment makes leads somewhere inside the repository: whoever takes
the project over must find what the code relies on in it, not in notes left elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
FOLDERS = ("gateway", "actors", "tests", "docs", "configs", "examples")
SUFFIXES = {".py", ".md", ".toml", ".js", ".html", ".service", ".conf", ".graphql", ".ts"}
SKIP = ("vendor", "node_modules")
# Notes that are not part of the repository: the design document and the guides.
OUTSIDE = re.compile(r"guides/|DESIGN|thespian\.md|neonize\.md|\bguide §")
SECTION = re.compile(r"(docs/[\w.-]+\.md) §(\d+)")
HEADING = re.compile(r"(docs/[\w.-]+\.md),\s+\"([^\"]+)\"")


def files() -> list[Path]:
    found = [ROOT / "README.md"]
    for folder in FOLDERS:
        found += [p for p in sorted((ROOT / folder).rglob("*"))
                  if p.is_file() and p.suffix in SUFFIXES and not set(SKIP) & set(p.parts)]
    return [p for p in found if p != Path(__file__)]


def test_nothing_points_outside_the_repository() -> None:
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert hits == []


def headings(doc: Path) -> list[str]:
    """The page's headings; none when the page itself does not exist."""
    if not doc.is_file():
        return []
    return [line.lstrip("#").strip() for line in doc.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def test_every_section_a_comment_names_exists() -> None:
    """``docs/x.md §4`` names a numbered heading; ``docs/x.md, "Title"`` a heading by its
    title (a comment's line break inside the title counts as a space)."""
    missing = []
    for path in files():
        text = re.sub(r"\s*\n\s*(?:#|\*|//)?\s*", " ", path.read_text(encoding="utf-8"))
        for doc, number in SECTION.findall(text):
            if not any(h.startswith(f"{number}. ") for h in headings(ROOT / doc)):
                missing.append(f"{path.relative_to(ROOT)}: {doc} §{number}")
        for doc, title in HEADING.findall(text):
            if title not in headings(ROOT / doc):
                missing.append(f"{path.relative_to(ROOT)}: {doc}, \"{title}\"")
    assert missing == []
