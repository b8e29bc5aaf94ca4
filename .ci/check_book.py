"""Fail on the kinds of defect a strict Sphinx build lets through, in the built HTML book and its sources.

    python .ci/check_book.py _build/ci/_build/html --sources notebooks/*.md book/*.md _config.yml _toc.yml

Each check reads one page (or one source file) and returns what it found as short messages:

- ``unrendered_tables``: a Markdown table that did not render (its pipes end up in a paragraph,
  e.g. when the separator row has another number of cells than the header);
- ``control_characters``: a TAB or another control character in a source file or in a formula of a
  page (a "\\t" in "\\text" written from a Python string renders as "d_e xthead");
- ``uncaptioned_figures``: an image on a page that is not a numbered figure with a caption;
- ``visible_scaffolding``: papermill's injected parameters, nbval markers or the Colab install cell
  on a page;
- ``cdn_math``: math loaded from the network instead of the MathJax bundled with the book, or math
  on a page without it.
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from pathlib import Path

from bs4 import BeautifulSoup

TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
TABLE_RULE = re.compile(r"\|\s*:?-{3,}:?\s*\|")
SCAFFOLDING = {
    "NBVAL": "an nbval marker",
    "google.colab": "the Colab install cell",
    "injected-parameters": "papermill's injected parameters",
    "# Parameters": "papermill's injected parameters",
}
REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)
MATH_SCRIPT = re.compile(r"mathjax|katex", re.IGNORECASE)


def _content(soup: BeautifulSoup):
    """The page's article (what the chapter wrote), or the whole page when the theme has none."""
    return soup.find("article") or soup.find("main") or soup


def _control(text: str) -> list[str]:
    """Names of the control characters in ``text`` other than the newline."""
    return sorted({unicodedata.name(c, repr(c)) if c != "\t" else "TAB" for c in text
                   if unicodedata.category(c) == "Cc" and c != "\n"})


def unrendered_tables(soup: BeautifulSoup) -> list[str]:
    found = []
    for paragraph in _content(soup).find_all("p"):
        text = paragraph.get_text()
        rows = [line for line in text.splitlines() if TABLE_ROW.match(line) and line.count("|") >= 3]
        if rows or TABLE_RULE.search(text):
            found.append(f"a Markdown table did not render: {(rows or [text])[0].strip()[:70]!r}")
    return found


def control_characters(soup: BeautifulSoup) -> list[str]:
    found = []
    for math in _content(soup).select(".math"):
        names = _control(math.get_text())
        if names:
            found.append(f"{', '.join(names)} inside a formula: {math.get_text().strip()[:60]!r}")
    return found


def uncaptioned_figures(soup: BeautifulSoup) -> list[str]:
    found = []
    for image in _content(soup).find_all("img"):
        figure = image.find_parent("figure")
        number = figure.find(class_="caption-number") if figure is not None else None
        if number is None:
            found.append(f"an image that is not a numbered, captioned figure: {image.get('src', '')[-60:]!r}")
    return found


def visible_scaffolding(soup: BeautifulSoup) -> list[str]:
    content = _content(soup)
    found = [f"{what} visible ({marker!r})" for marker, what in SCAFFOLDING.items() if marker in content.get_text()]
    if content.select('[class*="tag_injected-parameters"]'):
        found.append("papermill's injected parameters visible (a cell tagged injected-parameters)")
    return sorted(set(found))


def cdn_math(soup: BeautifulSoup, page: Path | None = None) -> list[str]:
    scripts = [script.get("src", "") for script in soup.find_all("script") if MATH_SCRIPT.search(script.get("src", ""))]
    found = [f"math loaded from the network: {src}" for src in scripts if REMOTE.match(src)]
    local = [src for src in scripts if not REMOTE.match(src)]
    if _content(soup).select(".math") and not local:
        found.append("math on the page but no bundled MathJax to render it")
    if page is not None:
        for src in local:
            if not (page.parent / src.split("?")[0]).is_file():
                found.append(f"bundled MathJax missing: {src}")
    return found


PAGE_CHECKS = (unrendered_tables, control_characters, uncaptioned_figures, visible_scaffolding)


def check_page(html: str, page: Path | None = None) -> list[str]:
    """Every problem of one HTML page."""
    soup = BeautifulSoup(html, "html.parser")
    return [problem for check in PAGE_CHECKS for problem in check(soup)] + cdn_math(soup, page)


def check_source(text: str) -> list[str]:
    """Control characters in a source file (Markdown, notebook source, configuration)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        names = _control(line.rstrip("\r"))
        if names:
            found.append(f"line {number}: {', '.join(names)}: {line.strip()[:60]!r}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built HTML folder")
    parser.add_argument("--sources", type=Path, nargs="*", default=[],
                        help="source files to check for control characters")
    args = parser.parse_args()
    pages = sorted(page for page in args.html.rglob("*.html") if "_static" not in page.parts)
    if not pages:
        sys.exit(f"no HTML pages under {args.html}")
    skipped = {"genindex.html", "search.html", "index.html", "py-modindex.html"}
    problems = [f"{page}: {problem}" for page in pages if page.name not in skipped
                for problem in check_page(page.read_text(encoding="utf-8"), page)]
    problems += [f"{source}: {problem}" for source in args.sources
                 for problem in check_source(source.read_text(encoding="utf-8"))]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(f"{len(problems)} problems in the book")
    print(f"{len(pages)} pages and {len(args.sources)} sources checked: no unrendered tables, control characters, "
          "uncaptioned figures, visible scaffolding or math from a CDN")


if __name__ == "__main__":
    main()
