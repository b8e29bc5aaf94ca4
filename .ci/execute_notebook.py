"""Execute a chapter (or an appendix page) with papermill and keep papermill's cell off the book's page.

    python .ci/execute_notebook.py SOURCE OUTPUT [-p NAME VALUE]...

SOURCE is a notebook (.ipynb) or a jupytext MyST file (.md). papermill inserts a cell tagged
"injected-parameters" after the "parameters" cell; this script tags it "remove-cell" as well, so
that jupyter-book leaves it out of the page while nbval, which re-runs the executed copy, still runs
it. Execution errors fail the command (papermill raises).
"""

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
import papermill

HIDE = "remove-cell"


def hide_injected_parameters(notebook: nbformat.NotebookNode) -> int:
    """Tag papermill's injected cells "remove-cell"; return how many there were."""
    count = 0
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            count += 1
            if HIDE not in tags:
                tags.append(HIDE)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args()
    notebook = jupytext.read(args.source)
    notebook.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    executed = papermill.execute_notebook(
        notebook, str(args.output), parameters=dict(args.parameter), kernel_name="python3",
        progress_bar=False, log_output=False,
    )
    hide_injected_parameters(executed)
    nbformat.write(executed, args.output)


if __name__ == "__main__":
    sys.exit(main())
