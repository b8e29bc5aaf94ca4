"""Small result tables for notebooks: Markdown in Jupyter and the book, aligned text in a terminal.

A chapter compares several linear paths; :func:`barrier_table` puts one row per path with its
loss barrier max_l B_l, its accuracy barrier and the endpoint losses L(theta_A), L(theta_B).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..barrier import BarrierCurve

__all__ = ["Table", "barrier_table"]


def _cell(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@dataclass(frozen=True, repr=False)
class Table:
    """Named columns and rows of values; floats are shown with ``digits`` decimals."""

    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    digits: int = 3

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"Table: row {row} has {len(row)} values for {len(self.columns)} columns")

    def cells(self) -> list[list[str]]:
        """The header followed by every row, as strings."""
        return [list(self.columns)] + [[_cell(v, self.digits) for v in row] for row in self.rows]

    def _repr_markdown_(self) -> str:
        header, *body = self.cells()
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
