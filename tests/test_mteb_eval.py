"""mteb evaluation on local BEIR-style folders with the tiny model, and the eval stage's mteb comparison."""

from __future__ import annotations

import json

import pytest
from sentence_transformers import SentenceTransformer

from st_retrofit.config import ConfigError
from st_retrofit.evaluation.mteb import beir_task, comparison, mteb_prompts, read_results, run_mteb
from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict
from st_retrofit.synth import build_demo_dataset


def write_beir(folder, language="en", entities=8):
    """The demo pairs of one language as a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    rows = [r for r in build_demo_dataset(languages=[language], train_entities=2, eval_entities=entities,
                                          queries_per_document=1, seed=3)["eval"]]  # fmt: skip
    (folder / "qrels").mkdir(parents=True)
    docs = {r["document"]: f"d{i}" for i, r in enumerate(rows)}
    with (folder / "corpus.jsonl").open("w") as f:
        for text, doc_id in docs.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"_id": f"q{i}", "text": r["query"]}, ensure_ascii=False) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{docs[r['document']]}\t1" for i, r in enumerate(rows)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_a_beir_folder_runs_as_an_mteb_task_and_writes_mteb_results(tiny_model_path, tmp_path):
    task = beir_task(write_beir(tmp_path / "towns-en"))
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    scores = run_mteb(model, "test-org/tiny", [task], tmp_path / "out", batch_size=16)
    assert set(scores) == {"towns-en"} and 0 < scores["towns-en"] <= 1
    files = list((tmp_path / "out" / "results" / "test-org__tiny").rglob("towns-en.json"))
    assert len(files) == 1  # mteb's own layout: results/<model>/<revision>/<task>.json
    saved = json.loads(files[0].read_text())
    assert saved["scores"]["test"][0]["main_score"] == pytest.approx(scores["towns-en"])
    assert read_results(tmp_path / "out") == pytest.approx(scores)


def test_a_folder_without_beir_files_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="corpus.jsonl"):
        beir_task(tmp_path / "empty")


def test_prompts_are_handed_to_mteb_under_its_names(tiny_model):
    tiny_model.prompts = {"query": "query: ", "passage": "passage: ", "nq-query": "q: ", "nq-passage": "p: ", "x": ""}
    assert mteb_prompts(tiny_model) == {"query": "query: ", "document": "passage: ", "nq-query": "q: ",
                                        "nq-document": "p: "}  # fmt: skip


def test_the_comparison_has_a_column_per_model_and_a_mean_over_shared_tasks():
    data, table = comparison({"base": {"a": 0.5, "b": 0.6}, "gte": {"a": 0.7}, "retrofitted": {"a": 0.6, "b": 0.8}})
    assert data["shared_tasks"] == ["a"] and data["mean"]["retrofitted"] == pytest.approx(0.6)
    assert "| b | 0.6000 | - | 0.8000 | +0.2000 |" in table
    assert table.splitlines()[0] == "| task | base | gte | retrofitted | Δ retrofitted vs base |"


def test_the_eval_stage_adds_the_mteb_comparison_and_the_release_carries_it(tiny_recipe_data, tmp_path):
    beir = write_beir(tmp_path / "towns-ru", language="ru")
    baseline = tmp_path / "baseline"
    model = SentenceTransformer(str(tiny_recipe_data["model"]["base"]), device="cpu")
    run_mteb(model, "other/model", [beir_task(beir)], baseline, batch_size=16)
    data = {**tiny_recipe_data, "eval": {**tiny_recipe_data["eval"], "mteb_tasks": [str(beir)],
                                         "mteb_baselines": {"other": str(baseline)}}}  # fmt: skip
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe)
    results = json.loads(outputs["eval"].read_text())
    assert results["mteb"]["models"] == ["base", "other", "retrofitted"]
    assert results["mteb"]["rows"][0]["task"] == "towns-ru"
    # The baseline is the base model evaluated the same way: the same score.
    assert results["mteb"]["rows"][0]["other"] == pytest.approx(results["mteb"]["rows"][0]["base"])
    assert (recipe.run_dir / "eval" / "mteb_comparison.md").read_text().startswith("| task | base | other |")
    assert list((recipe.run_dir / "eval" / "mteb" / "results").iterdir())

    # The release: mteb's results folder, the manifest, and the scores as model-index metadata the Hub reads.
    from huggingface_hub import ModelCard

    release = outputs["publish"]
    assert list((release / "mteb_results" / "test-org__tiny-retrofit").rglob("towns-ru.json"))
    assert json.loads((release / "manifest.json").read_text())["recipe"]["name"] == "tiny"
    card = ModelCard.load(release / "README.md")
    mteb_entries = [r for r in card.data.eval_results if r.dataset_name == "MTEB towns-ru"]
    assert len(mteb_entries) == 1 and mteb_entries[0].metric_type == "ndcg_at_10"
    assert mteb_entries[0].metric_value == pytest.approx(results["mteb"]["rows"][0]["retrofitted"], abs=1e-4)
    assert "| towns-ru |" in card.text


def test_unknown_mteb_entries_and_missing_baselines_name_the_key(tiny_recipe_data, tmp_path):
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**tiny_recipe_data, "eval": {"mteb_tasks": ["NoSuchTaskAnywhere"]}})
    assert info.value.key == "eval.mteb_tasks[0]" and "NoSuchTaskAnywhere" in info.value.message
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**tiny_recipe_data, "eval": {"mteb_baselines": {"gte": str(tmp_path / "nope")}}})
    assert info.value.key == "eval.mteb_baselines.gte"


def test_benchmarks_tasks_and_task_types_resolve_without_data(tmp_path):
    from st_retrofit.evaluation.mteb import resolve_tasks

    retrieval = resolve_tasks(["MTEB(Multilingual, v2):Retrieval"])
    assert len(retrieval) > 10 and {t.metadata.type for t in retrieval} == {"Retrieval"}
    assert [t.metadata.name for t in resolve_tasks(["MIRACLRetrieval"])] == ["MIRACLRetrieval"]
    with pytest.raises(ConfigError, match="has no STS task"):
        resolve_tasks(["NanoBEIR-multilingual:STS"])


def test_per_query_scores_from_saved_rankings_average_to_mtebs_score_and_a_model_equals_itself(
    tiny_model_path, tmp_path
):
    from st_retrofit.evaluation.significance import paired_bootstrap, per_query_scores

    tasks = [beir_task(write_beir(tmp_path / "towns-en"), name="towns-en"),
             beir_task(write_beir(tmp_path / "towns-de", language="de"), name="towns-de")]  # fmt: skip
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    scores = run_mteb(model, "tiny", tasks, tmp_path / "out", 16, prediction_folder=tmp_path / "predictions")
    per_query = per_query_scores(tmp_path / "predictions", tasks)
    for task, queries in per_query.items():
        assert len(queries) == 8 and sum(queries.values()) / 8 == pytest.approx(scores[task], abs=1e-4)
    same = paired_bootstrap(per_query, per_query, samples=200)
    assert same["difference"] == same["low"] == same["high"] == 0.0 and same["share_above"] == 0.0
    # A model one query better on one task: ahead on average, by 1/8 of that query's gain over two tasks.
    better = {task: dict(queries) for task, queries in per_query.items()}
    worst = min(better["towns-en"], key=better["towns-en"].get)
    gain = 1.0 - better["towns-en"][worst]
    better["towns-en"][worst] = 1.0
    result = paired_bootstrap(better, per_query, samples=2000)
    assert result["difference"] == pytest.approx(gain / 8 / 2)
    assert result["low"] == 0.0 and result["high"] > result["difference"] and 0 < result["share_above"] < 1
    with pytest.raises(ValueError, match="same tasks and queries"):
        paired_bootstrap(better, {"towns-en": per_query["towns-en"]})


def test_the_real_text_benchmark_scores_keep_rankings_and_compare_by_paired_bootstrap(tiny_model_path, tmp_path):
    """benchmarks/real_text.py's scoring path on tiny tasks: scores with rankings kept, read back on a rerun, and
    the teacher recipe's line against another system."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "real_text", Path(__file__).resolve().parents[1] / "benchmarks" / "real_text.py"
    )
    real_text = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_text)
    tasks = [beir_task(write_beir(tmp_path / "towns-en"), name="towns-en")]
    load = real_text.folder_loader(tiny_model_path, 48)
    first = real_text.scored(real_text.TEACHER, tmp_path / "ours", {"k": 1}, load, tasks)
    again = real_text.scored(real_text.TEACHER, tmp_path / "ours", {"k": 1}, lambda: pytest.fail("rescored"), tasks)
    assert first == again and real_text.REUSED == [real_text.TEACHER]
    real_text.scored("plain ST, scale 100", tmp_path / "plain", {"k": 1}, load, tasks)
    report = real_text.significance(tasks, ["plain ST, scale 100"])
    assert report["results"][real_text.TEACHER]["plain ST, scale 100"]["difference"] == 0.0  # the same model twice
    assert report["lines"][0].startswith("teacher recipe - plain ST, scale 100: +0.00 [+0.00, +0.00]")
