"""The ``lmc`` command end to end on tiny GPT-2, ViT and MLP folders made here (nothing downloaded)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from transformers import GPT2LMHeadModel

import lmc_lib as lmc
from contract import max_relative_error, outputs
from lmc_lib import io
from lmc_lib.cli import main
from test_models_gpt2 import VOCAB, gpt2
from test_models_vit import vit

GPT = dict(n_embd=16, n_layer=2, n_head=2, n_inner=24)
VIT = dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)
TOKENIZER = Path(os.environ.get("LMC_DATA_DIR", "../shared/data")) / "gpt2_tokenizer"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two GPT-2s (Hugging Face folders), two ViTs (timm exports), two MLPs, a wider GPT-2, and data files."""
    root = tmp_path_factory.mktemp("cli")
    made = {}
    for seed in (0, 1):
        made[f"gpt{seed}"] = root / f"gpt{seed}"
        gpt2(GPT, seed, canonical=False).save_pretrained(made[f"gpt{seed}"])
        made[f"vit{seed}"] = lmc.save(vit(VIT, seed, canonical=False), root / f"vit{seed}")
        torch.manual_seed(seed)
        made[f"mlp{seed}"] = lmc.save(lmc.MLP(lmc.MLPConfig(64, (24,), 10)), root / f"mlp{seed}")
    made["gpt_wide"] = root / "gpt_wide"
    gpt2({**GPT, "n_embd": 24}, canonical=False).save_pretrained(made["gpt_wide"])
    generator = torch.Generator().manual_seed(0)
    made["tokens"] = root / "tokens.safetensors"
    save_file({"inputs": torch.randint(0, VOCAB, (6, 12), generator=generator),
               "targets": torch.randint(0, VOCAB, (6, 12), generator=generator)}, made["tokens"])
    made["images"] = root / "images.safetensors"
    save_file({"inputs": torch.randn(10, 1, 8, 8, generator=generator),
               "targets": torch.randint(0, 5, (10,), generator=generator)}, made["images"])
    made["text"] = root / "text.txt"
    made["text"].write_text("To be, or not to be, that is the question. " * 20)
    made["empty"] = root / "empty"
    made["empty"].mkdir()
    return {name: Path(path) for name, path in made.items()}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_align_permutations_exports_a_gpt2_that_transformers_loads_alone(folders, capsys, tmp_path):
    code, out, err = run(capsys, "align", folders["gpt0"], folders["gpt1"], tmp_path, "--classes", "permutations")
    assert code == 0 and "5 permutation" in out and err == ""
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "b")  # no lmc_lib involved
    a, b = (GPT2LMHeadModel.from_pretrained(folders[f"gpt{s}"]) for s in (0, 1))
    b.name_or_path = a.name_or_path = b.transformer.name_or_path = a.transformer.name_or_path = ""
    expected = lmc.weight_matching(a, b, classes="permutations").apply(b)
    x = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    assert max_relative_error(outputs(expected, x), outputs(exported, x)) <= 1e-5
    assert max_relative_error(outputs(b, x), outputs(exported, x)) <= 1e-5  # the aligned B computes what B computes
    sidecar = io.read_sidecar(tmp_path / "b")
    assert sidecar["storage"] == "transformers" and not sidecar["canonical"]
    assert [(p["name"], p["method"], p["classes"]) for p in sidecar["passes"]] == [("align", "weight", "permutations")]
    assert {t["kind"] for t in sidecar["transforms"].values()} == {"permutation"}
    assert sidecar["sources"] == {"a": str(folders["gpt0"]), "b": str(folders["gpt1"])}


def test_align_permutations_exports_a_vit_that_timm_loads_alone(folders, capsys, tmp_path):
    code, _, _ = run(capsys, "align", folders["vit0"], folders["vit1"], tmp_path, "--classes", "permutations")
    assert code == 0
    config = json.loads((tmp_path / "b" / "timm_config.json").read_text())
    exported = VisionTransformer(**config["kwargs"])  # no lmc_lib involved
    exported.load_state_dict(load_file(tmp_path / "b" / "model.safetensors"))
    a, b = lmc.load(folders["vit0"]), lmc.load(folders["vit1"])
    expected = lmc.weight_matching(a, b, classes="permutations").apply(b)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert max_relative_error(outputs(expected, x), outputs(exported, x)) <= 1e-5
    assert max_relative_error(outputs(b, x), outputs(exported, x)) <= 1e-5


def test_align_paper_canonicalizes_both_and_barrier_reads_the_pair(folders, capsys, tmp_path):
    code, out, _ = run(capsys, "align", folders["gpt0"], folders["gpt1"], tmp_path / "al", "--data", folders["tokens"])
    assert code == 0 and "canonicalized A and B first" in out and "1 orthogonal" in out
    for side in ("a", "b"):
        sidecar = io.read_sidecar(tmp_path / "al" / side)
        assert sidecar["canonical"] and sidecar["storage"] == "lmc_lib"
    passes = io.read_sidecar(tmp_path / "al" / "b")["passes"]
    assert [p["name"] for p in passes] == ["canonicalize", "align"] and passes[1]["classes"] == "paper"
    assert [p["name"] for p in io.read_sidecar(tmp_path / "al" / "a")["passes"]] == ["canonicalize"]
    a, b = (lmc.canonicalize(gpt2(GPT, s, canonical=False)) for s in (0, 1))
    al = lmc.weight_matching(a, b, classes="paper")
    x = load_file(folders["tokens"])["inputs"]
    assert max_relative_error(outputs(al.apply(b), x), outputs(lmc.load(tmp_path / "al" / "b"), x)) <= 1e-5
    assert io.load_transforms(tmp_path / "al" / "b").keys() == al.transforms.keys()

    report, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    code, out, _ = run(capsys, "barrier", tmp_path / "al" / "a", tmp_path / "al" / "b", "--data", folders["tokens"],
                       "--lambdas", "5", "--json", report, "--plot", plot)
    assert code == 0 and "loss barrier" in out and plot.stat().st_size > 0
    curve = lmc.barrier(a, al.apply(b), [(x, load_file(folders["tokens"])["targets"])], lambdas=5, progress=False)
    written = json.loads(report.read_text())
    assert written["lambdas"] == pytest.approx(curve.lambdas.tolist())
    assert written["losses"] == pytest.approx(curve.losses.tolist(), abs=1e-5)
    assert written["barrier"] == pytest.approx(curve.barrier, abs=1e-5)


def test_vit_activation_matching_and_the_barrier_of_unaligned_folders(folders, capsys, tmp_path):
    code, out, _ = run(capsys, "align", folders["vit0"], folders["vit1"], tmp_path, "--method", "activation",
                       "--classes", "permutation,orthogonal", "--data", folders["images"])
    assert code == 0 and "activation matching" in out
    assert io.read_sidecar(tmp_path / "b")["passes"][-1]["method"] == "activation"
    code, out, _ = run(capsys, "barrier", folders["vit0"], folders["vit1"], "--data", folders["images"],
                       "--lambdas", "3", "--json")
    curve = json.loads(out)
    assert code == 0 and len(curve["losses"]) == 3 and curve["examples"] == 10


def test_mlps_on_digits(folders, capsys, tmp_path):
    code, _, _ = run(capsys, "align", folders["mlp0"], folders["mlp1"], tmp_path, "--classes", "permutations")
    assert code == 0 and io.read_sidecar(tmp_path / "b")["family"] == "mlp"
    code, out, _ = run(capsys, "barrier", tmp_path / "a", tmp_path / "b", "--data", "digits", "--limit", "200",
                       "--lambdas", "3", "--json")
    assert code == 0 and json.loads(out)["examples"] == 200


def test_info_and_canonicalize(folders, capsys, tmp_path):
    code, out, _ = run(capsys, "info", folders["gpt0"], "--json")
    info = json.loads(out)
    assert code == 0 and info["family"] == "hf-gpt2" and not info["canonical"]
    assert {s["group"] for s in info["spaces"]} == {"residual", "heads", "qk", "ov", "mlp"}
    assert next(s for s in info["spaces"] if s["name"] == "residual") == {
        "name": "residual", "group": "residual", "size": 16, "classes": ["permutation"]}
    code, _, _ = run(capsys, "canonicalize", folders["vit0"], tmp_path)
    assert code == 0
    code, out, _ = run(capsys, "info", tmp_path)
    assert code == 0 and "canonical  yes" in out and "passes     canonicalize" in out
    assert "residual        1  16          permutation, orthogonal" in out


def test_python_m_lmc_lib_help():
    done = subprocess.run([sys.executable, "-m", "lmc_lib", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "align" in done.stdout and "barrier" in done.stdout


BAD_INPUTS = {  # case: (argv, with {folder} names filled in; the message)
    "no such folder": ("info {missing}", r"model '.*missing': no such folder"),
    "not a model": ("info {empty}", r"model '.*empty': not a model folder"),
    "a file": ("info {tokens}", r"a file, not a model folder"),
    "two families": ("align {gpt0} {vit1} {out}", r"A and B have different architectures: .*GPT2LMHeadModel"),
    "two widths": ("barrier {gpt0} {gpt_wide} --data {tokens}", r"different architectures: .*embed_dim = 16 vs 24"),
    "unknown classes": ("align {gpt0} {gpt1} {out} --classes rotations", r"--classes 'rotations': unknown class set"),
    "classes nowhere": ("align {mlp0} {mlp1} {out} --classes orthogonal", r"cannot align .*orthogonal"),
    "learned without data": ("align {gpt0} {gpt1} {out} --method learned", r"--method learned needs --data"),
    "activation without data": ("align {gpt0} {gpt1} {out} --method activation", r"needs --data"),
    "merge one model": ("merge {gpt0} {out}", r"needs at least two models and OUT"),
    "images for a gpt": ("barrier {gpt0} {gpt1} --data {images}", r"data '.*images.safetensors' does not fit model A"),
    "tokens for a vit": ("barrier {vit0} {vit1} --data {tokens}", r"does not fit model A: the ViT reads images"),
    "digits for a vit": ("barrier {vit0} {vit1} --data digits", r"data 'digits' does not fit"),
    "unknown data": ("barrier {gpt0} {gpt1} --data cifar7", r"data 'cifar7': unknown"),
    "text without tokenizer": ("barrier {gpt0} {gpt1} --data {text}", r"needs --tokenizer"),
    "canonical vs not": ("barrier {vit0} {canonical} --data {images}", r"canonical form and the other is not"),
    "unknown timm name": ("info timm:vit_nonexistent:{tokens}", r"timm has no model named 'vit_nonexistent'"),
    "timm weights of another model": ("info timm:vit_tiny_patch16_224:{tokens}", r"weights do not fit vit_tiny"),
    "mlp canonical form": ("canonicalize {mlp0} {out}", r"has no canonical form"),
    "bad lambdas": ("barrier {gpt0} {gpt1} --data {tokens} --lambdas 1", r"at least 2 points"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_with_one_line(case, folders, capsys, tmp_path):
    argv, message = BAD_INPUTS[case]
    paths = {**folders, "missing": tmp_path / "missing", "out": tmp_path / "out", "canonical": tmp_path / "canonical"}
    if case == "canonical vs not":
        lmc.save(vit(VIT, 1), paths["canonical"])
    argv = argv.format(**paths).split()
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(f"lmc {argv[0]}: ")
    assert re.search(message, err), err


def test_text_with_the_gpt2_tokenizer_does_not_fit_a_40_token_vocabulary(folders, capsys):
    if not (TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 tokenizer at {TOKENIZER}")
    code, _, err = run(capsys, "barrier", folders["gpt0"], folders["gpt1"], "--data", folders["text"],
                       "--tokenizer", TOKENIZER, "--block-size", "8")
    assert code == 1 and "outside the model's vocabulary of 40" in err


def test_a_non_empty_out_is_refused_before_any_work(folders, capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "align", folders["gpt0"], folders["gpt1"], tmp_path)
    assert code == 1 and "exists and is not empty" in err and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_usage_errors_exit_2(capsys):
    assert main(["align"]) == 2
    assert main([]) == 2
    assert "usage: lmc" in capsys.readouterr().err


def test_an_image_folder_is_read_with_the_vits_data_config(folders, capsys, tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            pixels = torch.randint(0, 256, (11, 13), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).convert("RGB").save(tmp_path / "images" / label / f"{i}.png")
    code, out, err = run(capsys, "barrier", folders["vit0"], folders["vit1"], "--data", tmp_path / "images",
                         "--lambdas", "3", "--json")
    curve = json.loads(out)
    assert code == 0, err
    assert curve["examples"] == 6 and len(curve["losses"]) == 3


def test_learned_matching_from_the_command(folders, capsys, tmp_path):
    code, out, err = run(capsys, "align", folders["gpt0"], folders["gpt1"], tmp_path, "--method", "learned",
                         "--data", folders["tokens"], "--steps", "6", "--json")
    assert code == 0, err
    assert json.loads(out)["method"] == "learned" and json.loads(out)["max_output_change"] <= 1e-5
    assert io.read_sidecar(tmp_path / "b")["passes"][-1]["method"] == "learned"


def test_merge_aligns_several_models_to_a_universe_and_averages_them(folders, capsys, tmp_path):
    code, out, err = run(capsys, "merge", folders["mlp0"], folders["mlp1"], folders["mlp0"], tmp_path / "merged",
                         "--classes", "permutations", "--data", "digits", "--limit", "100", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["losses"]["models"]) == 3
    merged = lmc.load(tmp_path / "merged")
    assert io.read_sidecar(tmp_path / "merged")["passes"][-1]["name"] == "merge"
    assert merged.state_dict().keys() == lmc.load(folders["mlp0"]).state_dict().keys()
