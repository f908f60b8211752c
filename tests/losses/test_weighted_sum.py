"""WeightedLossSum: library losses beside RetrofitInfoNCELoss on one forward pass, and train.losses."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import (
    GlobalOrthogonalRegularizationLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)

from st_retrofit.config import ConfigError
from st_retrofit.losses import RetrofitInfoNCELoss, WeightedLossSum
from st_retrofit.recipe import recipe_from_dict
from st_retrofit.train.config import TrainConfig
from st_retrofit.train.stage import build_loss

TEXTS = {
    "anchor": ["When was Mikaro founded?", "Welche Stadt liegt am Fluss Sadu?", "Which town lives from fishing?"],
    "positive": ["Mikaro was founded in 1723.", "Kato liegt am Fluss Sadu.", "Sodu lives from fishing."],
    "negative": ["Dabe was founded in 1790.", "Dabe liegt am Fluss Luse.", "Mikaro lives from mining."],
}
TEACHER = torch.tensor([[0.9, 0.5], [0.85, 0.84], [0.6, 0.3]])


def _features(model):
    return [model.preprocess(TEXTS[c]) for c in ("anchor", "positive", "negative")]


def test_the_sum_is_each_library_term_on_the_same_embeddings_weighted(tiny_model):
    torch.manual_seed(0)
    tiny_model.eval()  # no dropout: the terms are recomputed below on the same embeddings
    ours = RetrofitInfoNCELoss(tiny_model, scale=20.0, distill_weight=0.5)
    gor = GlobalOrthogonalRegularizationLoss(tiny_model)
    hard = MultipleNegativesRankingLoss(tiny_model, hardness_mode="in_batch_negatives", hardness_strength=5.0)
    loss = WeightedLossSum(tiny_model, [(ours, 1.0), (gor, 0.1), (hard, 0.5)])
    parts = loss(_features(tiny_model), TEACHER)
    with torch.no_grad():
        embeddings = [tiny_model(f)["sentence_embedding"] for f in _features(tiny_model)]
    expected = {**ours.compute_loss_from_embeddings(embeddings, TEACHER),
                **{k: 0.1 * v for k, v in gor.compute_loss_from_embeddings(embeddings).items()},
                "MultipleNegativesRankingLoss": 0.5 * hard.compute_loss_from_embeddings(embeddings, None)}  # fmt: skip
    assert set(parts) == set(expected)
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value.item(), abs=1e-5), key
    total = WeightedLossSum(tiny_model, [(ours, 1.0), (gor, 0.1), (hard, 0.5)], return_components=False)
    assert total(_features(tiny_model), TEACHER).item() == pytest.approx(
        sum(v.item() for v in expected.values()), abs=1e-5
    )
    assert [t["loss"] for t in loss.get_config_dict()["losses"]] == [
        "RetrofitInfoNCELoss", "GlobalOrthogonalRegularizationLoss", "MultipleNegativesRankingLoss"
    ]  # fmt: skip


def test_train_losses_build_the_sum_and_matryoshka_wraps_it_as_one_tensor(tiny_model):
    config = TrainConfig(loss="RetrofitInfoNCELoss", loss_kwargs={"scale": 20.0},
                         losses=[{"loss": "GlobalOrthogonalRegularizationLoss", "weight": 0.1}])  # fmt: skip
    loss = build_loss(config, tiny_model)
    assert isinstance(loss, WeightedLossSum) and loss.weights == [1.0, 0.1]
    assert isinstance(loss.losses[1], GlobalOrthogonalRegularizationLoss)
    wrapped = build_loss(config.model_copy(update={"matryoshka_dims": [32, 16]}), tiny_model)
    assert isinstance(wrapped, MatryoshkaLoss) and wrapped.loss.return_components is False
    assert wrapped.loss.losses[0].return_components is False
    value = wrapped(_features(tiny_model), None)
    assert isinstance(value, torch.Tensor) and value.ndim == 0


@pytest.mark.parametrize(
    ("term", "key"),
    [
        ({"loss": "GlobalOrthogonalRegularisationLoss"}, "train.losses[0].loss"),
        (
            {"loss": "GlobalOrthogonalRegularizationLoss", "kwargs": {"mean_wieght": 1}},
            "train.losses[0].kwargs.mean_wieght",
        ),
        ({"loss": "GlobalOrthogonalRegularizationLoss", "weight": -1}, "train.losses[0].weight"),
    ],
)
def test_a_bad_term_names_its_key(tiny_recipe_data, term, key):
    data = {**tiny_recipe_data, "train": {**tiny_recipe_data["train"], "losses": [term]}}
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert info.value.key == key


def test_a_gradient_caching_main_loss_cannot_share_its_pass_and_the_recipe_says_what_to_use(tiny_recipe_data):
    data = {**tiny_recipe_data, "train": {**tiny_recipe_data["train"], "loss": "CachedRetrofitInfoNCELoss",
            "loss_kwargs": {"mini_batch_size": 8},
            "losses": [{"loss": "GlobalOrthogonalRegularizationLoss", "weight": 0.1}]}}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert info.value.key == "train.losses" and "use RetrofitInfoNCELoss as train.loss" in info.value.message
