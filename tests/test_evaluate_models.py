"""`st-retrofit evaluate`: mteb tasks for any models without a recipe, side by side."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from test_mteb_eval import write_beir

from st_retrofit.cli import main
from st_retrofit.evaluation.mteb import beir_task, run_mteb


@pytest.fixture
def two_models(tiny_model_path, tmp_path):
    """The tiny model as a model folder, and a perturbed copy as a run folder's trained model."""
    other = SentenceTransformer(str(tiny_model_path), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    run = tmp_path / "runs" / "perturbed"
    other.save_pretrained(str(run / "train" / "model"))
    return str(tiny_model_path), str(run)


def test_models_are_scored_side_by_side_in_the_eval_stage_layout(two_models, tmp_path, capsys):
    beir = write_beir(tmp_path / "towns-en")
    out = tmp_path / "evaluation"
    assert main(["evaluate", *two_models, "--tasks", str(beir), "-o", str(out), "--batch-size", "16"]) == 0
    data = json.loads((out / "mteb_comparison.json").read_text())
    assert data["models"] == list(two_models) and data["main_scores"] == {"towns-en": "ndcg_at_10"}
    # Each column is the model's own mteb score on the task, as run_mteb gives it alone.
    for name, path in zip(two_models, (two_models[0], f"{two_models[1]}/train/model"), strict=True):
        alone = run_mteb(SentenceTransformer(path, device="cpu"), "x", [beir_task(beir)], tmp_path / "x", 16)
        assert data["rows"][0][name] == pytest.approx(alone["towns-en"], abs=1e-6)
    assert data["rows"][0][two_models[0]] != pytest.approx(data["rows"][0][two_models[1]], abs=1e-4)
    printed = capsys.readouterr().out
    assert f"| task | {two_models[0]} | {two_models[1]} | Δ {two_models[1]} vs {two_models[0]} |" in printed
    assert len(list((out / "mteb" / "results").rglob("towns-en.json"))) == 2


def test_an_unknown_task_or_model_is_one_line_naming_it(two_models, tmp_path, capsys):
    assert main(["evaluate", two_models[0], "--tasks", "NoSuchTaskAnywhere", "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: --tasks: 'NoSuchTaskAnywhere' is neither a folder")
    beir = write_beir(tmp_path / "towns-en")
    missing = str(tmp_path / "no-such-model")
    assert main(["evaluate", two_models[0], missing, "--tasks", str(beir), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: models[1]:")


def test_cut_sizes_are_scored_as_columns_beside_each_model(two_models, tmp_path, capsys):
    beir = write_beir(tmp_path / "towns-en")
    out = tmp_path / "evaluation"
    args = ["evaluate", two_models[0], "--tasks", str(beir), "-o", str(out), "--batch-size", "16"]
    assert main([*args, "--dimensions", "8", "16"]) == 0
    data = json.loads((out / "mteb_comparison.json").read_text())
    name = two_models[0]
    assert data["models"] == [name, f"{name} @16", f"{name} @8"]
    cut = SentenceTransformer(name, device="cpu", truncate_dim=8)
    alone = run_mteb(cut, "x", [beir_task(beir)], tmp_path / "x", 16)
    assert data["rows"][0][f"{name} @8"] == pytest.approx(alone["towns-en"], abs=1e-6)
    assert data["rows"][0][f"{name} @8"] != pytest.approx(data["rows"][0][name], abs=1e-4)

    assert main([*args, "-o", str(tmp_path / "other"), "--dimensions", "32"]) == 2  # the tiny model has 32
    assert "--dimensions" in capsys.readouterr().err


def test_encoder_backends_are_scored_as_columns_beside_each_model(two_models, tmp_path, capsys):
    """The fp32 graph scores as torch does; int8 is its own column (what int8 costs, measured); a misspelled
    backend is one line with the close match, before any model is scored."""
    pytest.importorskip("onnxruntime")
    beir = write_beir(tmp_path / "towns-en")
    out = tmp_path / "evaluation"
    name = two_models[0]
    args = ["evaluate", name, "--tasks", str(beir), "-o", str(out), "--batch-size", "16"]
    assert main([*args, "--backends", "onnx", "onnx-int8"]) == 0
    capsys.readouterr()
    data = json.loads((out / "mteb_comparison.json").read_text())
    assert data["models"] == [name, f"{name} [onnx]", f"{name} [onnx-int8]"]
    row = data["rows"][0]
    assert row[f"{name} [onnx]"] == pytest.approx(row[name], abs=1e-4)
    assert row[f"{name} [onnx-int8]"] is not None
    assert main([*args, "-o", str(tmp_path / "other"), "--backends", "onnx-int4"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --backends: unknown encoder backend 'onnx-int4' (did you mean onnx-int8?)")
    assert not (tmp_path / "other").exists()
