"""The distributed path: `torchrun` starts two CPU processes that train together through gloo DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from sentence_transformers import SentenceTransformer


def _global_step(run_dir) -> int:
    checkpoints = sorted((run_dir / "train" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())["global_step"]


@pytest.mark.slow
def test_two_gloo_processes_train_together_and_the_main_one_exports(tiny_recipe_data, tmp_path):
    # Enough distinct texts in one group for full batches on both ranks (DDP drops a short last batch).
    data = {
        **tiny_recipe_data,
        "synth": {**tiny_recipe_data["synth"], "train_entities": 24},
        "mining": {**tiny_recipe_data["mining"], "group_by": None},
        "mixing": {"no_duplicates": False},
    }
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "st_retrofit", "run", str(recipe), "--stages", "synth,mine,train",
         "--set", "name=single"], env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "st_retrofit", "run", str(recipe)], env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]

    run_dir = tmp_path / "runs" / "tiny"
    metrics = json.loads((run_dir / "train" / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2
    # Each optimizer step consumed one batch per process: half the steps of the single-process run.
    single_steps = _global_step(tmp_path / "runs" / "single")
    assert single_steps >= 4 and _global_step(run_dir) == single_steps // 2
    # Rank 0 alone wrote the stages' records and the exported model, and every stage finished.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["hardware"]["world_size"] == 2
    assert all(state["status"] == "done" for state in manifest["stages"].values())
    model = SentenceTransformer(str(run_dir / "train" / "model"), device="cpu")
    assert model.encode(["Когда был основан город Микаро?"]).shape == (1, 32)
    assert launched.stdout.count("publish:") == 1  # only the main process prints the outputs
