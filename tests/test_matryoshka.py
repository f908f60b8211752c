"""train.matryoshka_dims: the recipe's loss inside sentence-transformers' MatryoshkaLoss, checked and trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

from st_retrofit.config import ConfigError
from st_retrofit.losses import RetrofitInfoNCELoss
from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict
from st_retrofit.train.config import TrainConfig
from st_retrofit.train.stage import build_loss


def test_the_loss_is_wrapped_and_returns_one_tensor_per_size(tiny_model):
    config = TrainConfig(loss="RetrofitInfoNCELoss", loss_kwargs={"scale": 20.0, "distill_weight": 0.5},
                         matryoshka_dims=[32, 16, 8], matryoshka_weights=[1.0, 0.5, 0.5])  # fmt: skip
    loss = build_loss(config, tiny_model)
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.loss, RetrofitInfoNCELoss)
    assert list(loss.matryoshka_dims) == [32, 16, 8] and list(loss.matryoshka_weights) == [1.0, 0.5, 0.5]
    assert loss.loss.return_components is False and loss.loss.distill_weight == 0.5
    plain = build_loss(TrainConfig(loss="RetrofitInfoNCELoss"), tiny_model)
    assert isinstance(plain, RetrofitInfoNCELoss) and plain.return_components is True


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"matryoshka_dims": [16, 32]}, "matryoshka_dims"),
        ({"matryoshka_dims": [32, 32]}, "matryoshka_dims"),
        ({"matryoshka_dims": [32, 0]}, "matryoshka_dims[1]"),
        ({"matryoshka_dims": [32, 16], "matryoshka_weights": [1.0]}, "matryoshka_weights"),
    ],
)
def test_bad_sizes_name_the_key(fields, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**fields)
    assert info.value.key == key


def test_a_size_above_the_models_is_named(tiny_model):
    with pytest.raises(ConfigError, match="train.matryoshka_dims: the model's embeddings have 32 dimensions; 64"):
        build_loss(TrainConfig(matryoshka_dims=[64, 16]), tiny_model)


def test_a_recipe_trains_at_every_size_with_teacher_scores_as_labels(tiny_recipe_data):
    data = {**tiny_recipe_data, "train": {**tiny_recipe_data["train"], "loss": "RetrofitInfoNCELoss",
            "loss_kwargs": {"scale": 20.0, "distill_weight": 0.5}, "matryoshka_dims": [32, 16]}}  # fmt: skip
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    model = SentenceTransformer(str(outputs["train"]), device="cpu", truncate_dim=16)
    assert model.encode(["Mikaro was founded in 1723."]).shape == (1, 16)

    # The eval stage scores every smaller size; its figure is the model's own at truncate_dim=16.
    from datasets import load_from_disk

    from st_retrofit.evaluation.heldout import evaluate_retrieval

    results = json.loads(Path(outputs["eval"]).read_text())
    assert set(results["dimensions"]) == {"16"}
    pairs = load_from_disk(str(recipe.run_dir / "synth" / "dataset"))["eval"]
    model.max_seq_length = 48
    expected = evaluate_retrieval(model, pairs, k=5, batch_size=16)["mean"]["ndcg"]
    assert results["dimensions"]["16"]["retrofitted"]["ndcg"] == pytest.approx(expected, abs=1e-6)
    assert results["dimensions"]["16"]["retrofitted"]["ndcg"] != pytest.approx(results["retrofitted"]["mean"]["ndcg"])
    assert "| 16 |" in (Path(outputs["eval"]).parent / "results.md").read_text()

    # The card says how to load a smaller size, with the held-out score at each.
    run_pipeline(recipe, stages=["publish"])
    card = (recipe.run_dir / "publish" / "release" / "README.md").read_text()
    assert "`MatryoshkaLoss` at 32, 16 dimensions" in card and "truncate_dim=16)" in card and "| 16 |" in card


def test_eval_dimensions_score_cut_embeddings_of_a_model_trained_without_matryoshka(tiny_recipe_data):
    data = {**tiny_recipe_data, "eval": {**tiny_recipe_data["eval"], "dimensions": [8, 16]}}
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    results = json.loads(Path(outputs["eval"]).read_text())
    assert list(results["dimensions"]) == ["16", "8"]  # largest first, as the table reads
    model = SentenceTransformer(str(outputs["train"]), device="cpu", truncate_dim=8)
    model.max_seq_length = 48
    from datasets import load_from_disk

    from st_retrofit.evaluation.heldout import evaluate_retrieval

    pairs = load_from_disk(str(recipe.run_dir / "synth" / "dataset"))["eval"]
    expected = evaluate_retrieval(model, pairs, k=5, batch_size=16)["mean"]["ndcg"]
    assert results["dimensions"]["8"]["retrofitted"]["ndcg"] == pytest.approx(expected, abs=1e-6)
    run_pipeline(recipe, stages=["publish"])
    card = (recipe.run_dir / "publish" / "release" / "README.md").read_text()
    assert "truncate_dim" not in card  # cutting was measured, not trained for: the card does not offer it


def test_the_cached_loss_trains_inside_matryoshka_as_the_recipes_use_it(tiny_recipe_data):
    data = {**tiny_recipe_data, "train": {**tiny_recipe_data["train"], "loss": "CachedRetrofitInfoNCELoss",
            "loss_kwargs": {"scale": 20.0, "mini_batch_size": 4, "distill_weight": 0.5},
            "matryoshka_dims": [32, 16]}}  # fmt: skip
    data["train"]["args"] = {**data["train"]["args"], "max_steps": 2}
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train"])
    history = json.loads(next((recipe.run_dir / "train").rglob("trainer_state.json")).read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2  # MatryoshkaLoss drove the gradient-caching loss through both steps
    assert SentenceTransformer(str(outputs["train"]), truncate_dim=16).encode(["Mikaro"]).shape == (1, 16)
