"""Results files: written with their provenance, read back equal, refused when incomplete; the papers'
tables and the report helpers that the appendix pages build from them."""

import json

import numpy as np
import pytest

import lmc_lib as lmc
from lmc_lib.book import paper, results
from lmc_lib.book.report import provenance, records_table


def curve(losses, accuracies):
    return lmc.BarrierCurve(np.linspace(0, 1, len(losses)), np.array(losses), np.array(accuracies))


def test_a_record_reads_back_with_date_machine_and_versions(tmp_path):
    config = lmc.TrainConfig(epochs=2)
    path = results.record("chapter", {"barrier": np.float64(0.25), "grid": np.arange(3)},
                          settings={"training": config, "seeds": (0, 1)}, folder=tmp_path)
    assert path == tmp_path / "chapter.json"
    document = results.read("chapter", tmp_path)
    assert document["results"] == {"barrier": 0.25, "grid": [0, 1, 2]}
    assert document["settings"]["training"]["epochs"] == 2 and document["settings"]["training"]["type"] == "TrainConfig"
    assert document["settings"]["seeds"] == [0, 1]
    assert set(results.REQUIRED_KEYS) <= set(document)
    assert {"python", "torch", "lmc_lib"} <= set(document["versions"])
    assert document["machine"]["cores"] >= 1 and document["machine"]["gpu"] is None


def test_the_results_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LMC_RESULTS_DIR", str(tmp_path))
    results.record("page", [1, 2])
    assert results.read("page")["results"] == [1, 2]


def test_a_missing_file_reads_as_none_and_an_incomplete_one_is_refused(tmp_path):
    assert results.read("absent", tmp_path) is None
    (tmp_path / "partial.json").write_text(json.dumps({"name": "partial", "results": []}))
    with pytest.raises(ValueError, match=r"lacks \['date', 'machine', 'versions'\]"):
        results.read("partial", tmp_path)


def test_not_a_number_is_refused_rather_than_written(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values"):
        results.record("bad", {"barrier": float("nan")}, folder=tmp_path)


def test_curve_summary_holds_the_barriers_and_the_endpoints():
    summary = results.curve_summary({"vanilla": curve([0.2, 1.0, 0.4], [0.9, 0.5, 0.8])})
    assert summary["vanilla"] == {"loss_barrier": pytest.approx(0.7), "accuracy_barrier": pytest.approx(0.35),
                                  "loss_a": 0.2, "loss_b": 0.4, "accuracy_a": 0.9, "accuracy_b": 0.8, "points": 3}


def test_table2_is_the_papers_and_agrees_with_the_means_the_chapters_print():
    assert paper.table2().rows[2] == ("weight matching (orthogonal + permutations)", "0.36 ± 0.01", "0.69 ± 0.21",
                                      "0.47 ± 0.04", "0.34 ± 0.01", "1.56 ± 0.02")
    method_of = {path: method for method, path in paper.OUR_PATHS.items() if path is not None}
    method_of |= {"learned matching, permutations": "learned matching, permutations only",
                  "learned matching, orthogonal": "learned matching (orthogonal + permutations)"}
    for setting, means in lmc.book.PAPER_BARRIERS.items():
        assert {path: paper.TABLE2[setting][method_of[path]][0] for path in means} == means


def test_compare_cell_says_not_reproduced_where_we_have_no_number():
    ours = results.curve_summary({"vanilla averaging": curve([0.2, 1.0, 0.4], [0.9, 0.5, 0.8])})
    table = paper.compare_cell("ViT CIFAR-10", ours)
    assert table.rows[0] == ("vanilla averaging", "1.69 ± 0.07", "0.70")
    assert {row[2] for row in table.rows[1:]} == {"not reproduced"}
    assert {row[2] for row in paper.compare_cell("GPT-2 BookCorpus", None).rows} == {"not reproduced"}


def test_a_recipe_is_described_from_its_results_file(tmp_path):
    recipe = lmc.book.RECIPES["vit-mnist"]["ci"]
    results.record("vit", {}, settings={"recipe": recipe}, folder=tmp_path)
    text = paper.describe_recipe(results.read("vit", tmp_path)["settings"]["recipe"])
    assert text == ("ViT, 2 blocks of width 32, 4 heads, MLP 64, patches 7 x 7; 3 epochs of AdamW (lr 0.003, batch 64, "
                    "weight decay 0.001, cosine schedule) on the first 8,000 training images of MNIST")


def test_records_table_takes_its_columns_from_the_records():
    table = records_table([{"data": "in memory", "K": 11, "speed_up": 1.5}, {"data": "loader", "K": 25, "extra": 2}])
    assert table.columns == ("data", "K", "speed up", "extra")
    assert table.rows[1] == ("loader", 25, "-", 2)
    with pytest.raises(ValueError, match="no records"):
        records_table([])


def test_provenance_names_the_date_the_machine_and_the_versions():
    document = {"date": "2026-12-01", "machine": {"cpu": "AMD EPYC", "torch_threads": 2, "cores": 2, "gpu": None},
                "versions": {"torch": "2.14.1"}, "name": "x", "results": []}
    assert provenance(document) == "measured on 2026-12-01, AMD EPYC, 2 threads of 2 cores; torch 2.14.1"
    document["machine"]["gpu"] = "NVIDIA H200"
    assert provenance(document).startswith("measured on 2026-12-01, NVIDIA H200;")


def test_markdown_cells_keep_their_pipes_inside_the_cell():
    markdown = lmc.book.Table(("a", "b"), (("x|y", "z"),))._repr_markdown_()
    assert markdown.splitlines()[-1] == "| x\\|y | z |"
