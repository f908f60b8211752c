"""OpenVINO without optimum: the converted graph reproduces the torch model, int8 weights stay close and shrink the
file, a conversion is whole or absent, the cache keeps the backends apart, and the miner and the export command use
it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

from st_retrofit.export import (  # noqa: E402
    ONNX_FILE,
    OPENVINO_FILE,
    OPENVINO_INT8_FILE,
    SAMPLE_TEXTS,
    compress_int8_weights,
    convert_openvino,
    cosine_agreement,
    export_model_folder,
    export_onnx,
    load_onnx,
    load_openvino,
)

TEXTS = ["the river city of Veltra", "a quiet harbour town", "Veltra lies on a river", "x"]


@pytest.fixture(scope="module")
def converted(tiny_model_path, tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    folder = tmp_path_factory.mktemp("openvino")
    fp32 = convert_openvino(export_onnx(model, folder / ONNX_FILE), folder / OPENVINO_FILE)
    return model, fp32, compress_int8_weights(fp32, folder / OPENVINO_INT8_FILE)


def test_fp32_ir_matches_torch_at_other_batch_and_sequence_sizes(converted):
    """Traced on 2 texts, converted, run on 1 and 4 texts of other lengths, with the model's prompts."""
    import copy

    model, fp32, _ = converted
    model = copy.deepcopy(model)
    model.prompts = {"query": "query: ", "document": "passage: "}
    openvino_model = load_openvino(model, fp32, threads=1)
    for texts in (TEXTS[:1], TEXTS):
        np.testing.assert_allclose(
            openvino_model.encode_query(texts, convert_to_numpy=True), model.encode_query(texts, convert_to_numpy=True),
            atol=1e-5,
        )  # fmt: skip
    assert openvino_model.prompts == model.prompts and openvino_model.max_seq_length == model.max_seq_length
    assert openvino_model.get_embedding_dimension() == model.get_embedding_dimension()


def test_int8_weights_stay_close_to_fp32_and_shrink_the_weights(converted):
    model, fp32, int8 = converted
    fp32_agreement = cosine_agreement(model, load_openvino(model, fp32))
    int8_agreement = cosine_agreement(model, load_openvino(model, int8))
    assert fp32_agreement["min"] >= 0.99999
    # Weights rounded to 1/255 of each channel's range: close, but not the fp32 model.
    assert 0.99 <= int8_agreement["min"] < fp32_agreement["min"], int8_agreement
    assert int8.with_suffix(".bin").stat().st_size < 0.5 * fp32.with_suffix(".bin").stat().st_size


def test_cache_namespace_names_the_runtime_and_the_file(converted, tmp_path):
    from st_retrofit.mining.cache import encoder_backend

    model, fp32, int8 = converted
    onnx_file = fp32.parent.parent / ONNX_FILE
    names = [encoder_backend(m) for m in (load_onnx(model, onnx_file), load_openvino(model, fp32),
                                          load_openvino(model, int8))]  # fmt: skip
    assert names == ["onnx-model", "openvino-openvino_model", "openvino-openvino_model_int8_weights"]


def test_an_interrupted_conversion_leaves_no_model(converted, tmp_path, monkeypatch):
    """The ``.bin`` is written, then the conversion is stopped: no ``.xml`` (what readers look for), no work folder."""
    import openvino

    _, fp32, _ = converted
    real_save = openvino.save_model

    def save_then_stop(model, path, **kwargs):
        real_save(model, path, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(openvino, "save_model", save_then_stop)
    target = tmp_path / OPENVINO_FILE
    with pytest.raises(KeyboardInterrupt):
        convert_openvino(fp32.parent.parent / ONNX_FILE, target)
    assert list(target.parent.iterdir()) == []


def test_the_miner_on_openvino_finds_the_torch_negatives(tiny_recipe_data):
    """fp32 OpenVINO computes the torch model's vectors: the same negatives, under its own cache namespace."""
    from datasets import load_from_disk

    from st_retrofit.pipeline import run_pipeline
    from st_retrofit.recipe import recipe_from_dict

    runs = {}
    for backend in ("torch", "openvino"):
        mining = {**tiny_recipe_data["mining"], "backend": backend}
        outputs = run_pipeline(recipe_from_dict({**tiny_recipe_data, "name": backend, "mining": mining}),
                               stages=["synth", "mine"])  # fmt: skip
        report = json.loads((outputs["mine"].parent / "report.json").read_text())
        runs[backend] = report, load_from_disk(str(outputs["mine"]))
    report, mined = runs["openvino"]
    assert report["cache"]["document_namespace"].endswith("-openvino-openvino_model")
    assert report["cache"]["encoded"] > 0  # not read from the torch vectors
    for split in mined:
        assert mined[split]["negative_1"] == runs["torch"][1][split]["negative_1"]


def test_export_command_writes_the_openvino_files_with_their_agreement(tiny_model_path, tmp_path, capsys):
    from st_retrofit.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(tiny_model_path), str(out), "--int8", "--openvino"]) == 0
    printed = capsys.readouterr().out
    assert f"{OPENVINO_FILE}: cosine to the torch model, mean 1.0000" in printed
    assert f"{OPENVINO_INT8_FILE}: cosine" in printed
    assert (out / OPENVINO_INT8_FILE).with_suffix(".bin").is_file()
    report = json.loads((out / "onnx" / "agreement.json").read_text())
    assert sorted(report["files"]) == sorted(["onnx/model.onnx", "onnx/model_qint8.onnx", OPENVINO_FILE,
                                              OPENVINO_INT8_FILE])  # fmt: skip

    # Without --openvino nothing of OpenVINO's is written.
    report = export_model_folder(str(tiny_model_path), tmp_path / "plain", texts=SAMPLE_TEXTS[:2])
    assert report["files"] == [ONNX_FILE] and not (tmp_path / "plain" / "openvino").exists()
