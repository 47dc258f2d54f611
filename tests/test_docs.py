"""The README and docs/: the README stays short, every relative link points to a file that
exists, and a number the README quotes beside a link is found in the record it links to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 250
# written by `python -m training report`, whose table of contents has its own anchors: its
# links are checked for files only
GENERATED = {REPO / "docs" / "report.md"}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")
# decimals (0.9108) and thousands (50,000): the numbers a reader could take for a measurement
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+|(?:,\d{3})+)(?![\w.])")
# a paper's own numbering (Definition 2.1, Sec. 4.1) is a reference, not a measurement
REFERENCE = re.compile(r"\b(?:Definition|Section|Sec\.|Figs?\.|Figures?|Algorithm|Appendix|Table)\s+[\d.]+")


def prose_lines(text: str, keep_references: bool = False) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans (and, unless
    ``keep_references``, a paper's section numbers) removed; headings keep their code spans."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if not line.startswith("#"):
            line = CODE_SPAN.sub("", line)
        out.append(line if keep_references else REFERENCE.sub("", line))
    return out


def relative_links(line: str) -> list[tuple[str, str]]:
    """(file, anchor) of each relative link on a line; file "" for an in-page anchor; no URLs."""
    return [(target.partition("#")[0], target.partition("#")[2]) for target in LINK.findall(line)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def relative_targets(line: str) -> list[str]:
    """The file part of each relative link to another file on a line."""
    return [f for f, _ in relative_links(line) if f]


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens; a repeated
    heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text, keep_references=True):
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def test_prose_lines_and_targets_closed_forms():
    text = "a [x](docs/a.md#b) `[y](no.md)`\n```\n[z](gone.md)\n```\n![i](f.png) [u](https://e.org) [h](#top)"
    lines = prose_lines(text)
    assert [t for line in lines for t in relative_targets(line)] == ["docs/a.md", "f.png"]
    assert NUMBER.findall("0.9108 +- 0.0013, 50,000 steps, VGG-16, (3.10+), 5 of 5") == ["0.9108", "0.0013", "50,000", "3.10"]
    assert prose_lines("Definition 2.1 and Sec. 4.1: 0.25") == [" and : 0.25"]
    assert anchors("# A b\n## `make reproduce`\n## Figure 3: x (Definition 2.1)\n## A b\n```\n# no\n```") == {
        "a-b", "make-reproduce", "figure-3-x-definition-21", "a-b-1"}


def test_readme_fits_on_a_few_screens():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines, at most {MAX_README_LINES}: move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page: Path):
    missing = []
    for line in prose_lines(page.read_text(), keep_references=True):
        for target, anchor in relative_links(line):
            path = page.parent / target if target else page
            if not path.exists():
                missing.append((target, "no such file"))
            elif (anchor and path.suffix == ".md" and page not in GENERATED
                  and anchor not in anchors(path.read_text())):
                missing.append((f"{target}#{anchor}", "no such heading"))
    assert not missing, f"{page.relative_to(REPO)}: broken links: {missing}"


def test_numbers_beside_a_link_are_quoted_from_the_linked_record():
    """A measured number has one source: where the README quotes one on the same line as a link
    to a record (the report, a model card, the benchmarks), the record must contain it."""
    stale = []
    for line in prose_lines(README.read_text()):
        records = [README.parent / t for t in relative_targets(line)]
        texts = [r.read_text() for r in records if r.is_file() and r.suffix == ".md"]
        if not texts:
            continue
        stale += [(n, line.strip()[:80]) for n in NUMBER.findall(line) if not any(n in t for t in texts)]
    assert not stale, f"README numbers not found in the record they link to: {stale}"
