from __future__ import annotations

import json

import pytest
import yaml
from datasets import load_from_disk
from sentence_transformers import SentenceTransformer

from st_retrofit import pipeline
from st_retrofit.cli import main
from st_retrofit.pipeline import STAGES, StageError, run_pipeline, stage_state
from st_retrofit.recipe import recipe_from_dict


def test_quickstart_pipeline_end_to_end_on_a_tiny_model(tiny_recipe_data, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_data))
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny"

    mined = load_from_disk(str(run_dir / "mine" / "dataset"))
    assert set(mined) == {"en", "ru", "ja"}
    assert mined["ru"].column_names == ["query", "document", "negative_1", "negative_2", "label"]
    assert (run_dir / "train" / "adapter" / "adapter_config.json").is_file()
    assert list((run_dir / "train" / "checkpoints").glob("checkpoint-*"))
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["base"]) == set(results["retrofitted"]) == {"en", "ru", "ja", "mean"}

    release = run_dir / "publish" / "release"
    model = SentenceTransformer(str(release), device="cpu")
    assert model.encode(["Когда был основан город Микаро?"]).shape == (1, 32)
    assert {"README.md", "eval_results.json", "recipe.yaml"} <= {p.name for p in release.iterdir()}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(manifest["stages"][name]["status"] == "done" for name in STAGES)

    out = capsys.readouterr().out
    assert "| mean |" in out and "publish:" in out


def test_pipeline_trains_with_the_retrofit_loss_and_teacher_scores(tiny_recipe_data, tmp_path):
    data = {**tiny_recipe_data, "train": {**tiny_recipe_data["train"], "loss": "RetrofitInfoNCELoss",
            "loss_kwargs": {"teacher_margin": 0.01, "distill_weight": 0.5}}}  # fmt: skip
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train"])
    metrics = json.loads((recipe.run_dir / "train" / "train_metrics.json").read_text())
    assert metrics["train_loss"] > 0
    assert (outputs["train"] / "model.safetensors").is_file()


def test_unchanged_stages_are_skipped(tiny_recipe_data, counting_stages):
    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe)
    run_pipeline(recipe)
    assert counting_stages == list(STAGES)


def test_changing_a_section_reruns_that_stage_and_those_after_it(tiny_recipe_data, counting_stages):
    run_pipeline(recipe_from_dict(tiny_recipe_data))
    counting_stages.clear()
    run_pipeline(recipe_from_dict(tiny_recipe_data, ["mining.num_negatives=3"]))
    assert counting_stages == ["mine", "train", "eval", "publish"]


def test_new_evaluation_reruns_publish_but_not_training(tiny_recipe_data, counting_stages):
    run_pipeline(recipe_from_dict(tiny_recipe_data))
    counting_stages.clear()
    run_pipeline(recipe_from_dict(tiny_recipe_data, ["eval.k=3"]))
    assert counting_stages == ["eval", "publish"]


def test_publish_without_evaluation_runs_again_once_evaluation_exists(tiny_recipe_data, counting_stages):
    data = {**tiny_recipe_data, "publish": {**tiny_recipe_data["publish"], "require_eval": False}}
    run_pipeline(recipe_from_dict(data), stages=["synth", "mine", "train", "publish"])
    counting_stages.clear()
    run_pipeline(recipe_from_dict(data), stages=["eval", "publish"])
    assert counting_stages == ["eval", "publish"]


def test_interrupted_stage_resumes_in_its_folder(tiny_recipe_data, counting_stages):
    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe, stages=["synth", "mine"])
    folder = recipe.run_dir / "train.partial"  # an interrupted stage's work, beside its finished output
    folder.mkdir()
    (folder / "partial.bin").write_text("checkpoint")
    fp = pipeline.fingerprint(recipe, "train")
    (folder / "stage.json").write_text(json.dumps({"status": "running", "fingerprint": fp}))

    run_pipeline(recipe, stages=["train"])
    assert (recipe.run_dir / "train" / "partial.bin").is_file()
    assert stage_state(recipe.run_dir, "train")["status"] == "done"


def test_stale_stage_folder_is_cleared(tiny_recipe_data, counting_stages):
    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe, stages=["synth"])
    (recipe.run_dir / "synth" / "stale.bin").write_text("old")
    run_pipeline(recipe_from_dict(tiny_recipe_data, ["synth.train_entities=13"]), stages=["synth"])
    assert not (recipe.run_dir / "synth" / "stale.bin").exists()


def test_stage_with_out_of_date_input_is_refused(tiny_recipe_data, counting_stages):
    run_pipeline(recipe_from_dict(tiny_recipe_data), stages=["synth", "mine"])
    with pytest.raises(StageError, match="mine.*out of date"):
        run_pipeline(recipe_from_dict(tiny_recipe_data, ["mining.num_negatives=3"]), stages=["train"])
