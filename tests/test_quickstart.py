"""The real quickstart recipe on the rebuilt multilingual-e5-small (about 5 minutes on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_retrofit import load_recipe, run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_recipe_improves_held_out_retrieval(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [f"output_dir={tmp_path}"])
    outputs = run_pipeline(recipe)

    results = json.loads(outputs["eval"].read_text())
    assert results["retrofitted"]["mean"]["ndcg"] > results["base"]["mean"]["ndcg"]
    assert (outputs["publish"] / "model.safetensors").is_file()
