"""Result tables: Markdown and text renderings hold every value, barrier_table reads the curves."""

import numpy as np
import pytest

import lmc_lib as lmc


def test_markdown_has_header_rule_and_one_line_per_row():
    table = lmc.book.Table(("name", "value"), (("a", 0.12345), ("b", 2)), digits=2)
    lines = table._repr_markdown_().splitlines()
    assert lines == ["| name | value |", "| --- | --- |", "| a | 0.12 |", "| b | 2 |"]


def test_text_columns_are_aligned():
    table = lmc.book.Table(("name", "value"), (("long name", 1.0), ("x", 10.0)), digits=1)
    lines = repr(table).splitlines()
    assert [line.index(value) for line, value in zip(lines, ("value", "1.0", "10.0"))] == [11, 11, 11]


def test_row_of_wrong_length_is_refused():
    with pytest.raises(ValueError, match="has 1 values for 2 columns"):
        lmc.book.Table(("name", "value"), (("only a name",),))


def test_barrier_table_reads_the_barriers():
    lambdas = np.linspace(0, 1, 3)
    curve = lmc.BarrierCurve(lambdas, np.array([0.2, 1.0, 0.4]), np.array([0.9, 0.5, 0.8]))
    table = lmc.book.barrier_table({"vanilla": curve}, label="alignment")
    assert table.columns[0] == "alignment"
    assert table.rows == (("vanilla", pytest.approx(0.7), pytest.approx(0.35), 0.2, 0.4),)
