from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard
from sentence_transformers import SentenceTransformer

from st_retrofit.evaluation.heldout import comparison_table
from st_retrofit.publish import PublishError, build_release_folder, push_release
from st_retrofit.recipe import recipe_from_dict

SCORES = {"ndcg": 0.8, "recall": 0.9, "mrr": 0.7}
RESULTS = {
    "k": 5,
    "base": {"en": dict(SCORES), "mean": dict(SCORES)},
    "retrofitted": {
        "en": {"ndcg": 0.85, "recall": 0.95, "mrr": 0.75},
        "mean": {"ndcg": 0.85, "recall": 0.95, "mrr": 0.75},
    },
}


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(RESULTS))
    (folder / "results.md").write_text(comparison_table(RESULTS, 5))
    return folder


def test_release_folder_holds_model_card_results_and_recipe(tiny_recipe_data, tiny_model_path, eval_dir, tmp_path):
    recipe = recipe_from_dict(tiny_recipe_data)
    folder = build_release_folder(recipe, tiny_model_path, eval_dir, tmp_path / "release")

    for name in ("model.safetensors", "modules.json", "README.md", "eval_results.json", "recipe.yaml"):
        assert (folder / name).is_file(), name
    assert SentenceTransformer(str(folder), device="cpu").get_embedding_dimension() == 32
    assert yaml.safe_load((folder / "recipe.yaml").read_text())["name"] == "tiny"

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "sentence-transformers"
    assert set(card.data.language) == {"en", "ru", "ja"}
    results = card.data.eval_results
    assert {(r.metric_type, r.metric_value) for r in results} >= {("ndcg_at_5", 0.85), ("recall_at_5", 0.95)}
    assert "| en | 0.8000 | 0.8500 | +0.0500 |" in card.text
    assert "2510.14274" in card.text
    assert "`MultipleNegativesRankingLoss`" in card.text


def test_release_is_refused_without_evaluation(tiny_recipe_data, tiny_model_path, tmp_path):
    with pytest.raises(PublishError, match="require_eval"):
        build_release_folder(recipe_from_dict(tiny_recipe_data), tiny_model_path, None, tmp_path / "release")


def test_release_without_evaluation_when_allowed(tiny_recipe_data, tiny_model_path, tmp_path):
    data = {**tiny_recipe_data, "publish": {**tiny_recipe_data["publish"], "require_eval": False}}
    folder = build_release_folder(recipe_from_dict(data), tiny_model_path, None, tmp_path / "release")
    assert "No evaluation results" in (folder / "README.md").read_text()
    assert not (folder / "eval_results.json").exists()


def test_custom_card_template_is_used(tiny_recipe_data, tiny_model_path, eval_dir, tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n# Custom card for {{ model_name }}\n")
    data = {**tiny_recipe_data, "publish": {**tiny_recipe_data["publish"], "card_template": str(template)}}
    folder = build_release_folder(recipe_from_dict(data), tiny_model_path, eval_dir, tmp_path / "release")
    assert "# Custom card for tiny-retrofit" in (folder / "README.md").read_text()


def test_token_never_lands_in_the_release_folder(tiny_recipe_data, tiny_model_path, eval_dir, tmp_path, monkeypatch):
    secret = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    folder = build_release_folder(recipe_from_dict(tiny_recipe_data), tiny_model_path, eval_dir, tmp_path / "r")
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_push_without_token_is_refused(tmp_path):
    with pytest.raises(PublishError, match="HF_TOKEN"):
        push_release(tmp_path, "test-org/tiny-retrofit")


def test_release_files_are_readable_by_others_and_the_card_lists_training_arguments(
    tiny_recipe_data, tiny_model_path, eval_dir, tmp_path
):
    import os

    folder = build_release_folder(recipe_from_dict(tiny_recipe_data), tiny_model_path, eval_dir, tmp_path / "r")
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in folder.rglob("*") if p.is_file())
    assert (
        "**Training arguments:** per_device_train_batch_size=8, learning_rate=0.001"
        in (folder / "README.md").read_text()
    )


def test_a_release_loads_with_plain_sentence_transformers_and_declares_its_requirements(
    tiny_recipe_data, tiny_model_path, eval_dir, tmp_path
):
    """The release needs no st-retrofit: a fresh interpreter that cannot import it loads the folder, and
    sentence-transformers checks the declared requirements before loading (an unmet one is refused)."""
    import subprocess
    import sys

    folder = build_release_folder(recipe_from_dict(tiny_recipe_data), tiny_model_path, eval_dir, tmp_path / "release")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["requirements"]["sentence-transformers"]["specifier"] == ">=6.0"
    assert "st-retrofit" not in config["requirements"]
    # The trained model's own file (hard-linked into the release) is left as it was.
    assert "requirements" not in json.loads((tiny_model_path / "config_sentence_transformers.json").read_text())

    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'st_retrofit': raise ImportError('st_retrofit is hidden')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer(sys.argv[1], device='cpu')\n"
        "print(model.encode_query(['a query']).shape[-1], 'st_retrofit' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", hide, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["32", "False"]

    config["requirements"]["sentence-transformers"] = ">=99.0"
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-c", hide, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "99.0" in done.stderr
