"""The release gate: publish refuses a model that scores below its base on the recipe's gate tasks."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from st_retrofit.config import ConfigError
from st_retrofit.publish import PublishError, build_release_folder
from st_retrofit.publish.release import release_gate
from st_retrofit.recipe import recipe_from_dict

HELD_OUT = {"ndcg": 0.8, "recall": 0.9, "mrr": 0.7, "queries": 40}
RESULTS = {
    "k": 10,
    "base": {"en": dict(HELD_OUT), "mean": dict(HELD_OUT)},
    "retrofitted": {"en": {**HELD_OUT, "ndcg": 0.82}, "mean": {**HELD_OUT, "ndcg": 0.82}},
    "mteb": {"rows": [
        {"task": "manpages-de-dev", "base": 0.70, "retrofitted": 0.74},
        {"task": "manpages-ja-dev", "base": 0.60, "retrofitted": 0.58},
        {"task": "manpages-de-test", "base": 0.71, "retrofitted": 0.69},
    ]},
}  # fmt: skip


def test_patterns_select_the_evaluated_tasks_and_find_the_regressions():
    gate = release_gate(RESULTS, ["*-dev", "heldout"])
    assert [row["task"] for row in gate["tasks"]] == ["manpages-de-dev", "manpages-ja-dev", "heldout"]
    assert [row["task"] for row in gate["regressions"]] == ["manpages-ja-dev"]
    assert release_gate(RESULTS, ["manpages-de-dev", "heldout"])["regressions"] == []
    assert release_gate(RESULTS, []) == {"tasks": [], "regressions": [], "tolerance": 0.0}


def test_a_tolerance_lets_a_small_task_move_by_that_much():
    # manpages-ja-dev is 0.02 below its base: a regression at tolerance 0.01, none at 0.03.
    assert [r["task"] for r in release_gate(RESULTS, ["*-dev"], tolerance=0.01)["regressions"]] == ["manpages-ja-dev"]
    assert release_gate(RESULTS, ["*-dev"], tolerance=0.03)["regressions"] == []


def test_a_gate_task_that_was_not_evaluated_names_the_key():
    with pytest.raises(ConfigError, match=r"^publish.gate_tasks\[1\]: '\*-val' matches no evaluated task"):
        release_gate(RESULTS, ["*-dev", "*-val"])


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(RESULTS))
    return folder


def test_a_regression_on_a_gate_task_refuses_the_release_unless_allowed(tiny_recipe_data, tiny_model_path, eval_dir,
                                                                          tmp_path):  # fmt: skip
    data = {**tiny_recipe_data, "publish": {"dry_run": True, "gate_tasks": ["*-dev"]}}
    with pytest.raises(PublishError, match=r"\(manpages-ja-dev 0.5800 < 0.6000\); .* publish.allow_regression: true"):
        build_release_folder(recipe_from_dict(data), tiny_model_path, eval_dir, tmp_path / "release")
    assert not (tmp_path / "release").exists()

    data["publish"]["allow_regression"] = True
    folder = build_release_folder(recipe_from_dict(data), tiny_model_path, eval_dir, tmp_path / "release")
    text = ModelCard.load(folder / "README.md").text
    assert (
        "**Release gate:** published only if it scores at least its base on manpages-de-dev, manpages-ja-dev" in text
    )
    assert "not met on manpages-ja-dev; published with publish.allow_regression" in text


def test_a_met_gate_is_stated_in_the_card(tiny_recipe_data, tiny_model_path, eval_dir, tmp_path):
    data = {**tiny_recipe_data, "publish": {"dry_run": True, "gate_tasks": ["manpages-de-dev", "heldout"]}}
    folder = build_release_folder(recipe_from_dict(data), tiny_model_path, eval_dir, tmp_path / "release")
    assert "on manpages-de-dev, heldout\n(met)." in ModelCard.load(folder / "README.md").text
    data["publish"] = {"dry_run": True, "gate_tasks": ["*-dev"], "gate_tolerance": 0.03}
    folder = build_release_folder(recipe_from_dict(data), tiny_model_path, eval_dir, tmp_path / "release-tolerant")
    assert (
        "at least its base (less 0.03 nDCG) on manpages-de-dev, manpages-ja-dev\n(met)."
        in ModelCard.load(folder / "README.md").text
    )
