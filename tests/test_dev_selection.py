"""With dev tasks, the train stage keeps the checkpoint with the best dev nDCG@10, not the last one."""

from __future__ import annotations

import json
import math

from sentence_transformers import SentenceTransformer

from st_retrofit.evaluation.heldout import dev_evaluator, retrieval_tasks
from st_retrofit.offline.manpages import write_beir
from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict
from st_retrofit.synth import build_demo_dataset


def test_the_exported_model_is_the_checkpoint_with_the_best_dev_score(tiny_recipe_data, tmp_path):
    dev = tmp_path / "dev"
    pairs = build_demo_dataset(languages=["en", "ru"], train_entities=2, eval_entities=8, seed=5)["eval"]
    for language, (queries, corpus, relevant) in retrieval_tasks(pairs).items():
        write_beir(dev / f"demo-{language}", queries, corpus, {q: sorted(d)[0] for q, d in relevant.items()})
    data = {**tiny_recipe_data, "train": {**tiny_recipe_data["train"], "dev_tasks": [str(dev)], "select_every": 2}}
    data["train"]["args"] = {**data["train"]["args"], "learning_rate": 5e-3, "num_train_epochs": 2}
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train"])

    dev_scores = json.loads((recipe.run_dir / "train" / "train_metrics.json").read_text())["dev"]
    curve = {int(step): score for step, score in dev_scores["mean_ndcg@10"].items()}
    assert len(curve) >= 3
    best_step = max(curve, key=lambda step: (curve[step], -step))  # the first of equal bests
    assert best_step != max(curve)  # this seed's run gets worse after its best: the last step is not kept
    assert dev_scores["kept"] == f"checkpoint-{best_step}" and math.isclose(dev_scores["best"], curve[best_step])
    exported = SentenceTransformer(str(outputs["train"]), device="cpu")
    score = dev_evaluator([str(dev)], batch_size=16)(exported)["sequential_score"]
    assert math.isclose(score, curve[best_step], abs_tol=1e-4)
    assert (recipe.run_dir / "train" / "dev_curve.png").is_file()
