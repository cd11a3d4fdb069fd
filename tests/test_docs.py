"""The documentation holds together: links resolve, code points at docs that exist, no citation of files the
repository does not have.

- every relative link in README.md and docs/*.md names an existing file, and its ``#anchor`` a heading of
  that page (GitHub's heading ids);
- every page under docs/ is reachable from README.md and listed in docs/index.md;
- every ``docs/<page>.md`` (or a top-level architecture page) a comment or docstring in the code names exists,
  and its ``: Section`` (``docs/architecture.md: Layers``) is a heading of that page;
- no code cites the design document or the numbered lecture-note files the project grew from (FORBIDDEN): they
  are not in the repository; the docs cite them by author and topic (docs/architecture.md: Background reading).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
CODE_SUFFIXES = {".py", ".toml", ".yaml", ".yml", ".cfg", ".sh"}
CODE_DIRS = ("datasets", "envs", "policies", "pipeline", "deploy", "configs", "tests", "bench", ".ci")
SKIP_PARTS = {".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "runs", "data"}

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_DOC_REF = re.compile(r"\b((?:docs/[\w./-]+\.md)|ARCHITECTURE\.md)(?::\s*([A-Z][^.;()\n\"`]*))?")
# Spelled in pieces so that a grep for these citations finds none here either.
FORBIDDEN = re.compile("DESIGN" + r"\.md|" + "refer" + r"ence 00\d", re.IGNORECASE)


def _prose(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks (links in code are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        out.append("" if fenced else line)
    return out


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading id of ``page`` (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [m.group(1) for line in _prose(page.read_text()) for m in LINK.finditer(line)]


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file or anchor does not exist."""
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    return bad


def code_files() -> list[Path]:
    out = []
    for top in CODE_DIRS:
        for p in (ROOT / top).rglob("*"):
            if p.is_file() and (p.suffix in CODE_SUFFIXES or p.parent.name == ".ci") and not SKIP_PARTS & set(p.parts):
                out.append(p)
    out += [ROOT / "pyproject.toml", ROOT / "constraints.txt"]
    return sorted(out)


def test_the_docs_exist():
    assert (DOCS / "index.md").is_file() and (DOCS / "architecture.md").is_file()
    assert len(PAGES) > 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_every_docs_page_is_linked_from_the_readme_and_the_index():
    def linked(page: Path) -> set[Path]:
        return {(page.parent / t.partition("#")[0]).resolve() for t in links(page) if t.partition("#")[0]}

    pages = {p.resolve() for p in DOCS.glob("*.md")} - {(DOCS / "index.md").resolve()}
    readme, index = linked(ROOT / "README.md"), linked(DOCS / "index.md")
    assert (DOCS / "index.md").resolve() in readme
    assert not pages - readme, f"docs pages the README does not link: {sorted(p.name for p in pages - readme)}"
    assert not pages - index, f"docs pages docs/index.md does not list: {sorted(p.name for p in pages - index)}"


def names_a_section(section: str, page: Path) -> bool:
    """Whether ``section`` (the text after ``docs/page.md:``, perhaps followed by prose) starts with one of
    ``page``'s headings: ``Layers, envs/`` names ``## Layers``."""
    words, ids = section.split(), anchors(page)
    return any(slug(" ".join(words[:n])) in ids for n in range(1, len(words) + 1))


def test_docs_named_in_the_code_exist():
    missing = []
    for f in code_files():
        if f == Path(__file__).resolve():
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for m in CODE_DOC_REF.finditer(line):
                name, section = m.group(1), m.group(2)
                target = ROOT / name
                where = f"{f.relative_to(ROOT)}:{n}"
                if not target.is_file():
                    missing.append(f"{where}: {name} does not exist")
                elif section and not names_a_section(section, target):
                    missing.append(f"{where}: {name} has no section {section.strip()!r}")
    assert not missing, "code points at docs that are not there:\n" + "\n".join(missing)


def test_no_citation_of_files_the_repository_does_not_have():
    found = []
    for f in code_files():
        if f == Path(__file__).resolve():
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{page.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, (
        "cite the repository's docs (docs/architecture.md: Layers) or the material by author and "
        "topic (docs/architecture.md: Background reading), not files the repository lacks:\n" + "\n".join(found)
    )


def test_slug_follows_github():
    assert slug("The export and runtime trust chain") == "the-export-and-runtime-trust-chain"
    assert slug("`o2o run`") == "o2o-run"
    assert slug("The dataset's integrity model") == "the-datasets-integrity-model"
    assert slug("Fingerprints, skipping and resuming") == "fingerprints-skipping-and-resuming"
    assert slug("What is checked, when") == "what-is-checked-when"
