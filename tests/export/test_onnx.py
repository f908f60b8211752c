"""ONNX export without optimum: the graph reproduces the torch model, int8 stays close, the folder is atomic, the
cache keeps backends apart, and a release's files are read back by onnxruntime alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from st_retrofit.export import (  # noqa: E402
    INT8_FILE,
    ONNX_FILE,
    SAMPLE_TEXTS,
    ExportError,
    cosine_agreement,
    export_model_folder,
    export_onnx,
    load_onnx,
    quantize_int8,
)

TEXTS = ["the river city of Veltra", "a quiet harbour town", "Veltra lies on a river", "x"]


@pytest.fixture(scope="module")
def exported(tiny_model_path, tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, folder / ONNX_FILE)
    return model, fp32, quantize_int8(fp32, folder / INT8_FILE)


def test_fp32_graph_matches_torch_at_other_batch_and_sequence_sizes(exported):
    """Traced on 2 texts; run on 1 and 4 texts of other lengths: the axes are dynamic, not baked in."""
    model, fp32, _ = exported
    onnx_model = load_onnx(model, fp32)
    for texts in (TEXTS[:1], TEXTS):
        expected = model.encode(texts, convert_to_numpy=True)
        got = onnx_model.encode(texts, convert_to_numpy=True)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert cosine_agreement(model, onnx_model)["min"] >= 0.999


def test_prompts_and_sequence_length_are_carried_over(exported):
    import copy

    model, fp32, _ = exported
    model = copy.deepcopy(model)
    model.prompts = {"query": "query: ", "document": "passage: "}
    onnx_model = load_onnx(model, fp32)
    assert onnx_model.prompts == model.prompts and onnx_model.max_seq_length == model.max_seq_length
    np.testing.assert_allclose(
        onnx_model.encode_query(TEXTS, convert_to_numpy=True), model.encode_query(TEXTS, convert_to_numpy=True),
        atol=1e-5,
    )  # fmt: skip
    assert onnx_model.get_embedding_dimension() == model.get_embedding_dimension()


def test_int8_is_close_to_fp32_and_smaller(exported):
    model, fp32, int8 = exported
    agreement = cosine_agreement(model, load_onnx(model, int8))
    assert agreement["mean"] >= 0.98 and agreement["min"] >= 0.95, agreement
    assert int8.stat().st_size < fp32.stat().st_size


def test_cache_namespace_names_the_onnx_backend(exported, tmp_path):
    from st_retrofit.mining.cache import EmbeddingCache, encoder_backend

    model, fp32, int8 = exported
    names = {encoder_backend(m) for m in (model, load_onnx(model, fp32), load_onnx(model, int8))}
    assert names == {"torch-float32", "onnx-model", "onnx-model_qint8"}
    folders = {EmbeddingCache(tmp_path, load_onnx(model, f), "document").folder for f in (fp32, int8)}
    assert len(folders) == 2


def test_export_folder_is_whole_or_absent(tiny_model_path, tmp_path, monkeypatch):
    report = export_model_folder(str(tiny_model_path), tmp_path / "out", int8=True, texts=SAMPLE_TEXTS[:4])
    assert sorted(report["files"]) == [ONNX_FILE, INT8_FILE]
    assert report["agreement"][ONNX_FILE]["min"] >= 0.999
    assert json.loads((tmp_path / "out" / "onnx" / "agreement.json").read_text()) == report
    assert (tmp_path / "out" / "modules.json").is_file()  # the torch model is there too
    with pytest.raises(ExportError, match="already exists"):
        export_model_folder(str(tiny_model_path), tmp_path / "out")

    import st_retrofit.export.onnx as onnx_module

    def broken(*args, **kwargs):
        raise RuntimeError("quantization failed")

    monkeypatch.setattr(onnx_module, "quantize_int8", broken)
    with pytest.raises(RuntimeError):
        export_model_folder(str(tiny_model_path), tmp_path / "second", int8=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no second/, no partial folder


def test_unsupported_module_is_one_error(tiny_model):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dropout

    model = SentenceTransformer(modules=[*tiny_model, Dropout(0.1)], device="cpu")
    with pytest.raises(ExportError, match=r"modules\[2\].*Dropout cannot be exported"):
        export_onnx(model, "unused.onnx")


def test_graph_is_read_by_plain_onnxruntime(exported, tiny_model):
    """What a release's card tells onnxruntime users to do: tokenize, run, read ``sentence_embedding``."""
    import onnxruntime as ort

    model, fp32, _ = exported
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    tokens = model.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="np")
    feeds = {i.name: tokens[i.name] for i in session.get_inputs()}
    hidden, embeddings = session.run(["last_hidden_state", "sentence_embedding"], feeds)
    assert hidden.shape[:2] == tokens["input_ids"].shape
    np.testing.assert_allclose(embeddings, model.encode(TEXTS, convert_to_numpy=True), atol=1e-5)


def test_export_command_prints_the_agreement_and_refuses_an_existing_folder(tiny_model_path, tmp_path, capsys):
    from st_retrofit.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(tiny_model_path), str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "onnx/model.onnx: cosine to the torch model, mean 1.0000" in printed
    assert "onnx/model_qint8.onnx: cosine" in printed and (out / INT8_FILE).is_file()
    assert main(["export", str(tiny_model_path), str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("already exists; choose a new folder")


def test_a_graph_the_tracer_cannot_follow_is_one_error(exported, monkeypatch, tmp_path):
    import torch

    model, _, _ = exported

    def refuses(*args, **kwargs):
        raise RuntimeError("Unsupported: data-dependent control flow\nlong trace")

    monkeypatch.setattr(torch.onnx, "export", refuses)
    with pytest.raises(ExportError, match=r"BertModel could not be traced to ONNX \(Unsupported: data-dependent"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_a_gemma3_encoder_with_sliding_window_masks_exports(tiny_model_path, tmp_path):
    """EmbeddingGemma's architecture (bidirectional Gemma 3 with sliding-window layers, whose masks transformers
    builds with vmap) in miniature: it traces, and matches torch past the sliding window."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import AutoTokenizer, Gemma3TextConfig, Gemma3TextModel

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, use_bidirectional_attention=True,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "gemma3"
    Gemma3TextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = Transformer(str(folder), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()], device="cpu"
    )
    onnx_model = load_onnx(model, export_onnx(model, tmp_path / "model.onnx"))
    texts = [*TEXTS, "a longer text with many more words than the sliding window of four tokens holds"]
    np.testing.assert_allclose(
        onnx_model.encode(texts, convert_to_numpy=True), model.encode(texts, convert_to_numpy=True), atol=1e-4
    )
