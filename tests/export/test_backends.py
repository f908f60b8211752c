"""The encoder backends in a run: the miner's teacher on onnxruntime, the evaluator's int8 scores, and a release
with int8 that onnxruntime reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from st_retrofit.config import ConfigError  # noqa: E402
from st_retrofit.pipeline import run_pipeline  # noqa: E402
from st_retrofit.recipe import recipe_from_dict  # noqa: E402


def with_int8(data: dict) -> dict:
    return {**data, "eval": {**data["eval"], "backends": ["onnx-int8"]},
            "publish": {**data["publish"], "int8": True}}  # fmt: skip


def test_mining_with_the_onnx_teacher_matches_torch(tiny_recipe_data):
    """fp32 ONNX computes the torch model's vectors: the same negatives, mined under its own cache namespace."""
    torch_run = recipe_from_dict({**tiny_recipe_data, "name": "torch"})
    onnx_run = recipe_from_dict({**tiny_recipe_data, "name": "onnx", "mining": {**tiny_recipe_data["mining"],
                                                                                "backend": "onnx"}})  # fmt: skip
    reports, datasets = [], []
    from datasets import load_from_disk

    for recipe in (torch_run, onnx_run):
        outputs = run_pipeline(recipe, stages=["synth", "mine"])
        reports.append(json.loads((outputs["mine"].parent / "report.json").read_text()))
        datasets.append(load_from_disk(str(outputs["mine"])))
    assert reports[0]["cache"]["document_namespace"].endswith("-torch-float32")
    assert reports[1]["cache"]["document_namespace"].endswith("-onnx-model")
    assert reports[1]["cache"]["encoded"] > 0  # not read from the torch vectors
    for split in datasets[0]:
        assert datasets[0][split]["negative_1"] == datasets[1][split]["negative_1"]


def test_int8_release_carries_the_graphs_and_their_measured_scores(tiny_recipe_data):
    recipe = recipe_from_dict(with_int8(tiny_recipe_data))
    outputs = run_pipeline(recipe)
    results = json.loads(outputs["eval"].read_text())
    entry = results["backends"]["onnx-int8"]
    assert entry["heldout_loss"] == pytest.approx(results["retrofitted"]["mean"]["ndcg"] - entry["heldout_ndcg"])
    assert "**Encoder backends**" in (recipe.run_dir / "eval" / "results.md").read_text()

    release = outputs["publish"]
    card = (release / "README.md").read_text()
    assert "### int8 with ONNX" in card and f"{entry['heldout_ndcg']:.4f}" in card
    assert 'model_kwargs={"file_name": "onnx/model_qint8.onnx"}' in card

    # What the card tells an onnxruntime user to do, on the release folder itself.
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    model = SentenceTransformer(str(release), device="cpu")
    tokenizer = Tokenizer.from_file(str(release / "tokenizer.json"))
    tokenizer.enable_padding()
    texts = ["Veltra lies on a river", "a quiet harbour town"]
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
              "token_type_ids": np.zeros_like(ids)}  # fmt: skip
    for name, tolerance in (("onnx/model.onnx", 1e-5), ("onnx/model_qint8.onnx", 0.2)):
        session = ort.InferenceSession(str(release / name), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        got = session.run(["sentence_embedding"], {k: v for k, v in inputs.items() if k in names})[0]
        np.testing.assert_allclose(got, model.encode(texts, convert_to_numpy=True), atol=tolerance)


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"publish": {"int8": True}}, "publish.int8", "add onnx-int8 to eval.backends"),
        ({"eval": {"backends": ["onnx-int9"]}}, "eval.backends[0]", "did you mean onnx-int8"),
        ({"eval": {"backends": ["torch"]}}, "eval.backends[0]", "torch is what eval scores anyway"),
        ({"mining": {"backend": "onnx", "teacher_dtype": "bfloat16"}}, "mining.teacher_dtype", "set it to float32"),
        ({"mining": {"backend": "onxx"}}, "mining.backend", "did you mean onnx"),
    ],
)
def test_backend_settings_are_checked_at_load(tiny_recipe_data, change, key, words):
    data = {section: {**tiny_recipe_data.get(section, {}), **values} for section, values in change.items()}
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**tiny_recipe_data, **data})
    assert info.value.key == key and words in info.value.message
