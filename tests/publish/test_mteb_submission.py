"""The MTEB leaderboard submission: ModelMeta code, results layout and the Hub's .eval_results, offline."""

from __future__ import annotations

import json

import mteb
import pytest
import yaml
from mteb import TaskResult

from st_retrofit.config import ConfigError
from st_retrofit.evaluation.heldout import comparison_table
from st_retrofit.publish import PublishError, build_release_folder
from st_retrofit.publish.mteb_submission import mteb_language, write_mteb_submission
from st_retrofit.recipe import recipe_from_dict

REPO = "test-org/tiny-retrofit"
RESULTS = {
    "k": 5,
    "base": {"mean": {"ndcg": 0.8, "recall": 0.9, "mrr": 0.7}},
    "retrofitted": {"mean": {"ndcg": 0.85, "recall": 0.95, "mrr": 0.75}},
}


def task_result(task, score: float) -> TaskResult:
    split = task.metadata.eval_splits[0]
    scores = {split: {subset: {"main_score": score, "ndcg_at_10": score} for subset in task.metadata.hf_subsets}}
    return TaskResult.from_task_results(task, scores, evaluation_time=1.0)


def local_task(folder):
    from st_retrofit.evaluation.mteb import beir_task

    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d0", "text": "a town"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q0", "text": "town"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    return beir_task(folder)


@pytest.fixture
def release(tiny_recipe_data, tiny_model_path, tmp_path):
    """A release folder whose eval results hold an mteb task (NFCorpus) and a local one, for base and model."""
    eval_dir = tmp_path / "eval"
    results = eval_dir / "mteb" / "results"
    towns = local_task(tmp_path / "towns-ru")
    for model, score in (("offline__base", 0.30), ("st-retrofit__tiny", 0.34)):
        folder = results / model / "no_revision_available"
        folder.mkdir(parents=True)
        task_result(mteb.get_task("NFCorpus"), score).to_disk(folder / "NFCorpus.json")
        task_result(towns, score).to_disk(folder / "towns-ru.json")
    (eval_dir / "results.json").write_text(json.dumps(RESULTS))
    (eval_dir / "results.md").write_text(comparison_table(RESULTS, 5))
    data = {
        **tiny_recipe_data,
        "publish": {"repo_id": REPO, "license": "mit", "mteb_training_datasets": ["MSMARCO"]},
    }
    recipe = recipe_from_dict(data)
    return recipe, build_release_folder(recipe, tiny_model_path, eval_dir, tmp_path / "release")


def test_language_codes_become_mtebs():
    assert [mteb_language(c) for c in ("de", "zh-Hant", "ja", "pt-BR")] == [
        "deu-Latn", "zho-Hant", "jpn-Jpan", "por-Latn",
    ]  # fmt: skip


def test_the_release_carries_the_hubs_eval_results_for_mteb_tasks_only(release):
    _, folder = release
    files = sorted(p.name for p in (folder / ".eval_results").iterdir())
    assert files == ["NFCorpus.yaml"]  # towns-ru is a local folder: no dataset on the Hub to point to
    entries = yaml.safe_load((folder / ".eval_results" / "NFCorpus.yaml").read_text())
    assert entries[0]["value"] == pytest.approx(34.0)  # the released model's, not the base's 30.0
    assert entries[0]["dataset"]["id"] == mteb.get_task("NFCorpus").metadata.dataset["path"]


def test_the_submission_holds_model_meta_code_results_and_eval_results(release, tmp_path):
    recipe, folder = release
    revision = "0123456789abcdef0123456789abcdef01234567"
    out = write_mteb_submission(recipe, folder, tmp_path / "submission", revision=revision)

    code_files = list((out / "mteb" / "mteb" / "models" / "model_implementations").glob("*.py"))
    assert [p.name for p in code_files] == ["tiny_retrofit_models.py"]
    namespace: dict = {}
    exec(code_files[0].read_text(), namespace)  # the file runs as mteb's own model files do
    meta = namespace["tiny_retrofit"]
    assert meta.name == REPO and meta.revision == revision
    assert meta.training_datasets == {"MSMARCO"} and meta.license == "mit" and meta.open_weights
    assert meta.languages == ["eng-Latn", "jpn-Jpan", "rus-Cyrl"]
    assert meta.embed_dim == 32 and meta.n_parameters == 65216  # the tiny model's, counted by torch
    assert meta.reference == f"https://huggingface.co/{REPO}"

    results = out / "results" / "results" / "test-org__tiny-retrofit" / revision
    assert sorted(p.name for p in results.iterdir()) == ["NFCorpus.json", "model_meta.json"]
    assert TaskResult.from_disk(results / "NFCorpus.json").get_score() == pytest.approx(0.34)
    assert json.loads((results / "model_meta.json").read_text())["name"] == REPO
    assert (out / "hub" / ".eval_results" / "NFCorpus.yaml").is_file()
    readme = (out / "README.md").read_text()
    assert "Left out (local tasks, not on the leaderboard): towns-ru." in readme
    assert "not pushed yet" not in readme


def test_an_unpushed_model_is_submitted_without_revision_and_the_readme_says_so(release, tmp_path):
    recipe, folder = release
    out = write_mteb_submission(recipe, folder, tmp_path / "submission")
    assert (out / "results" / "results" / "test-org__tiny-retrofit" / "no_revision_available").is_dir()
    assert "not pushed yet" in (out / "README.md").read_text()


def test_the_submission_never_writes_into_a_used_folder_and_names_missing_settings(release, tmp_path):
    recipe, folder = release
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(PublishError, match="not empty"):
        write_mteb_submission(recipe, folder, used)
    assert (used / "keep.txt").read_text() == "mine"

    data = recipe.to_dict()
    data["publish"]["license"] = None
    with pytest.raises(PublishError, match=r"^publish\.license"):
        write_mteb_submission(recipe_from_dict(data), folder, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_release_with_local_tasks_only_is_refused(tiny_recipe_data, tiny_model_path, tmp_path):
    data = {**tiny_recipe_data, "publish": {"repo_id": REPO, "license": "mit", "require_eval": False}}
    recipe = recipe_from_dict(data)
    folder = build_release_folder(recipe, tiny_model_path, None, tmp_path / "release")
    with pytest.raises(PublishError, match="no result on a task mteb knows"):  # no results at all here
        write_mteb_submission(recipe, folder, tmp_path / "submission")


def test_declared_training_datasets_must_be_mteb_tasks(tiny_recipe_data):
    data = {**tiny_recipe_data, "publish": {"mteb_training_datasets": ["MSMARCO", "MyOwnData"]}}
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert info.value.key == "publish.mteb_training_datasets[1]" and "MyOwnData" in info.value.message
