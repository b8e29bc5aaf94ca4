"""Small result tables for notebooks: Markdown in Jupyter and the book, aligned text in a terminal.

A chapter compares several linear paths; :func:`barrier_table` puts one row per path with its
loss barrier max_l B_l, its accuracy barrier and the endpoint losses L(theta_A), L(theta_B).
The appendix pages turn results files into tables (:func:`records_table`) and say where each was
measured (:func:`provenance`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..barrier import BarrierCurve

__all__ = ["Table", "barrier_table", "records_table", "provenance"]


def _cell(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@dataclass(frozen=True, repr=False)
class Table:
    """Named columns and rows of values; floats are shown with ``digits`` decimals."""

    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    digits: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns):
            raise TypeError(f"Table: columns must be a tuple of column names (strings), got {self.columns!r}")
        if isinstance(self.digits, bool) or not isinstance(self.digits, int) or self.digits < 0:
            raise ValueError(f"Table: digits must be a non-negative integer, got {self.digits!r}")
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"Table: row {row} has {len(row)} values for {len(self.columns)} columns")

    def cells(self) -> list[list[str]]:
        """The header followed by every row, as strings."""
        return [list(self.columns)] + [[_cell(v, self.digits) for v in row] for row in self.rows]

    def _repr_markdown_(self) -> str:
        """A Markdown table; pipes and line breaks inside cells are escaped so that every row keeps its cells."""
        header, *body = ([cell.replace("|", "\\|").replace("\n", " ") for cell in row] for row in self.cells())
        lines = [header, ["---"] * len(header), *body]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)

    def __repr__(self) -> str:
        """Plain text with left-aligned columns (what a terminal or a non-Markdown viewer shows)."""
        cells = self.cells()
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def barrier_table(curves: Mapping[str, BarrierCurve], *, label: str = "path", digits: int = 3) -> Table:
    """One row per curve: its name (column ``label``), loss barrier, accuracy barrier, L(theta_A), L(theta_B)."""
    rows = tuple(
        (name, curve.barrier, curve.accuracy_barrier, float(curve.losses[0]), float(curve.losses[-1]))
        for name, curve in curves.items()
    )
    header = (label, "loss barrier", "accuracy barrier", "loss A", "loss B")
    return Table(header, rows, digits)


def records_table(records: Sequence[Mapping[str, object]], *, digits: int = 3) -> Table:
    """One row per record (a flat mapping), one column per key in the order the first record lists them;
    a key a record lacks shows as "-"."""
    if not records:
        raise ValueError("records_table: no records")
    columns = tuple(dict.fromkeys(key for record in records for key in record))
    rows = tuple(tuple(record.get(key, "-") for key in columns) for record in records)
    return Table(tuple(column.replace("_", " ") for column in columns), rows, digits)


def provenance(document: Mapping, *, versions: bool = True) -> str:
    """Where and when a results file (:mod:`lmc_lib.book.results`) was measured, in one line; with
    ``versions`` the package versions too."""
    machine = document["machine"]
    where = f"{machine.get('gpu') or machine.get('cpu') or 'unknown CPU'}"
    if not machine.get("gpu"):
        where += f", {machine.get('torch_threads', '?')} threads of {machine.get('cores', '?')} cores"
    line = f"measured on {document['date']}, {where}"
    if versions:
        line += "; " + ", ".join(f"{name} {version}" for name, version in document["versions"].items())
    return line
