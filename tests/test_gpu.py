"""The training path on a CUDA GPU (deselected by default; run with `pytest -m gpu` where there is one)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sentence_transformers import SentenceTransformer

from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_training_on_the_gpu_exports_a_model_that_loads_on_the_cpu(tiny_recipe_data, lora):
    args = {**tiny_recipe_data["train"]["args"], "bf16": True}
    model = tiny_recipe_data["model"] if lora else {**tiny_recipe_data["model"], "lora": None}
    recipe = recipe_from_dict({**tiny_recipe_data, "model": model, "train": {"args": args,
                                                                          "loss": "RetrofitInfoNCELoss"}})  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    assert torch.cuda.max_memory_allocated() > 0  # the trainer ran on the GPU
    metrics = json.loads((recipe.run_dir / "train" / "train_metrics.json").read_text())
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    exported = SentenceTransformer(str(outputs["train"]), device="cpu")
    assert next(exported.parameters()).dtype == torch.float32  # bf16 autocast keeps fp32 master weights
    assert exported.encode(["Когда был основан город Микаро?"]).shape == (1, 32)
    results = json.loads(outputs["eval"].read_text())
    assert 0 <= results["retrofitted"]["mean"]["ndcg"] <= 1
