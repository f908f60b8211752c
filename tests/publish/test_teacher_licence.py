"""A model trained from a teacher whose licence reaches derivatives (EmbeddingGemma: the Gemma terms): the mining
report records the teacher's source, and the card names it, its verified sha256 and its terms."""

from __future__ import annotations

import json
import logging
import shutil

from huggingface_hub import ModelCard

from st_retrofit.models.resolve import OFFLINE_MODELS, model_source
from st_retrofit.pipeline import run_pipeline
from st_retrofit.publish import build_release_folder
from st_retrofit.recipe import recipe_from_dict

SHA = {"model.safetensors": "ab" * 32}


def _gemma_like_teacher(tiny_model_path, folder):
    """The tiny model, laid out as an assembled carrier model: a card saying `license: gemma` and the record."""
    shutil.copytree(tiny_model_path, folder)
    (folder / "README.md").write_text("---\nlicense: gemma\npipeline_tag: sentence-similarity\n---\n# teacher\n")
    record = {"hub_id": "google/embeddinggemma-300m", "license": "gemma", "license_url": "https://ai.google.dev/gemma/terms",
              "sha256": SHA}  # fmt: skip
    (folder / "assembled.json").write_text(json.dumps(record))
    return folder


def test_model_source_reads_the_registry_and_folders(tiny_model_path, tmp_path):
    gemma = model_source("offline:embeddinggemma-300m")
    assert (gemma["hub_id"], gemma["license"]) == ("google/embeddinggemma-300m", "gemma")
    assert gemma["license_url"] == OFFLINE_MODELS["embeddinggemma-300m"].license_url
    assert model_source("offline:multilingual-e5-small")["license"] == "mit"
    teacher = _gemma_like_teacher(tiny_model_path, tmp_path / "teacher")
    source = model_source(str(teacher))
    assert (
        source["license"] == "gemma" and source["sha256"] == SHA and source["hub_id"] == "google/embeddinggemma-300m"
    )
    assert model_source(str(tiny_model_path))["license"] is None  # no card, no record: unknown, not guessed


def test_the_card_names_the_teacher_its_sha256_and_its_terms(tiny_recipe_data, tiny_model_path, tmp_path, caplog):
    teacher = _gemma_like_teacher(tiny_model_path, tmp_path / "teacher")
    data = {**tiny_recipe_data, "mining": {**tiny_recipe_data["mining"], "teacher": str(teacher),
                                           "cache_dir": str(tmp_path / "cache")},
            "train": {**tiny_recipe_data["train"], "loss": "RetrofitInfoNCELoss",
                      "loss_kwargs": {"distill_weight": 0.5}},
            "publish": {**tiny_recipe_data["publish"], "require_eval": False}}  # fmt: skip
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth", "mine"])
    report = json.loads((recipe.run_dir / "mine" / "report.json").read_text())
    assert report["teacher"]["source"]["license"] == "gemma"
    assert report["teacher"]["backend"] == "torch-float32" and report["teacher"]["embedding_dim"] == 32

    with caplog.at_level(logging.WARNING, logger="st_retrofit.publish"):
        folder = build_release_folder(recipe, tiny_model_path, None, tmp_path / "release")
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "gemma"  # no licence of its own: the teacher's terms are named
    assert "**Teacher:**" in card.text and "google/embeddinggemma-300m" in card.text
    assert "mined the negatives and was distilled" in card.text
    assert SHA["model.safetensors"] in card.text and report["teacher"]["fingerprint"] in card.text
    assert "## Licence" in card.text and "*Model Derivative*" in card.text
    assert "derivative under the gemma licence" in caplog.text

    # A licence of its own does not lift the terms: the card keeps the notice and the publisher says so.
    data["publish"]["license"] = "mit"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="st_retrofit.publish"):
        folder = build_release_folder(recipe_from_dict(data), tiny_model_path, None, tmp_path / "release2")
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and "## Licence" in card.text
    assert "publish.license 'mit' does not lift them" in caplog.text


def test_a_teacher_without_derivative_terms_gets_no_licence_section(tiny_recipe_data, tiny_model_path, tmp_path):
    data = {**tiny_recipe_data, "mining": {**tiny_recipe_data["mining"], "cache_dir": str(tmp_path / "cache")},
            "publish": {**tiny_recipe_data["publish"], "require_eval": False}}  # fmt: skip
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth", "mine"])
    card = ModelCard.load(build_release_folder(recipe, tiny_model_path, None, tmp_path / "release") / "README.md")
    assert "**Teacher:**" in card.text and "mined the negatives." in card.text
    assert "## Licence" not in card.text and card.data.license is None
