"""The Table 2 runner: five rows per pair of models, their mean and standard error, in a results file."""

import json
import math

import pytest

from lmc_lib.book import reproduce
from test_recipes import shared_root, tiny  # noqa: F401 (shared_root is a fixture)


def test_reproduce_writes_five_rows_per_pair_and_their_summary(shared_root, tmp_path):  # noqa: F811
    path = reproduce.reproduce(tiny("vit-mnist"), "ci", pairs=2, steps=2, root=shared_root, cache=tmp_path,
                               out=tmp_path, device="cpu")
    document = json.loads(path.read_text())
    pairs, summary = document["results"]["pairs"], document["results"]["summary"]
    assert len(pairs) == 2 and all(set(p) == set(reproduce.ROWS) for p in pairs)
    for row in reproduce.ROWS:
        values = [p[row] for p in pairs]
        assert summary[row]["mean"] == pytest.approx(sum(values) / 2)
        assert summary[row]["standard_error"] == pytest.approx(abs(values[0] - values[1]) / 2)
        assert all(math.isfinite(v) for v in values)
    assert document["settings"]["pairs"] == 2 and "machine" in document and "versions" in document


def test_reproduce_refuses_empty_runs():
    with pytest.raises(ValueError, match="need pairs >= 1 and steps >= 1"):
        reproduce.reproduce("vit-mnist", "ci", pairs=0)
