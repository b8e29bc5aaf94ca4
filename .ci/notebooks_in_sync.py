"""Fail when a chapter's .ipynb is not what jupytext makes of its .md source, or holds outputs.

Each notebooks/NN_name.md (jupytext MyST, the source of truth) must have a paired
notebooks/NN_name.ipynb with the same cells (type, source, metadata; cell ids aside) and no outputs.
`make sync` regenerates the .ipynb files.
"""

import sys
from pathlib import Path

import jupytext
import nbformat


def cells(notebook) -> list[tuple]:
    return [(cell.cell_type, cell.source, dict(cell.metadata)) for cell in notebook.cells]


def problems(source: Path) -> list[str]:
    paired = source.with_suffix(".ipynb")
    if not paired.exists():
        return [f"{paired} is missing"]
    expected, actual = jupytext.read(source), nbformat.read(paired, as_version=4)
    found = []
    if cells(expected) != cells(actual):
        found.append(f"{paired} differs from {source}")
    if any(cell.get("outputs") or cell.get("execution_count") for cell in actual.cells):
        found.append(f"{paired} holds outputs")
    return found


if __name__ == "__main__":
    sources = sorted(Path("notebooks").glob("[0-9]*.md"))
    found = [problem for source in sources for problem in problems(source)]
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        sys.exit("notebooks out of sync: run `make sync` and commit the .ipynb files")
    print(f"{len(sources)} notebook pairs in sync")
