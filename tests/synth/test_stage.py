"""The synth stage with ``source: corpus``: recipe validation by key, and a heuristic run through the pipeline."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from st_retrofit.cli import main
from st_retrofit.config import ConfigError
from st_retrofit.pipeline import run_pipeline, run_stage
from st_retrofit.recipe import recipe_from_dict


def _corpus_recipe(tiny_recipe_data, corpus_file, **synth):
    return {
        **tiny_recipe_data,
        "synth": {"source": "corpus", "corpus": {"path": str(corpus_file)}, "pairs_per_document": 4,
                  "eval_fraction": 0.25} | synth,
        "mining": {**tiny_recipe_data["mining"], "group_by": None},
    }  # fmt: skip


def test_a_corpus_becomes_train_and_held_out_pairs_and_the_pipeline_runs_on_them(
    tiny_recipe_data, corpus_file, capsys
):
    recipe = recipe_from_dict(_corpus_recipe(tiny_recipe_data, corpus_file))
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    data = load_from_disk(str(outputs["synth"]))
    train, held_out = data["train"], data["eval"]
    assert len(train) > len(held_out) > 0
    assert not set(train["id"]) & set(held_out["id"])  # held out by document
    assert set(train["backend"]) == {"heuristic"} and "template" in train.column_names
    report = json.loads((recipe.run_dir / "synth" / "report.json").read_text())
    assert report["splits"]["train"]["accepted"] == len(train) and report["backend"] is None
    results = json.loads(outputs["eval"].read_text())
    assert results["retrofitted"]["mean"]["ndcg"] >= 0


def test_caps_scale_to_the_held_out_share_of_documents(tiny_recipe_data, corpus_file):
    recipe = recipe_from_dict(
        _corpus_recipe(tiny_recipe_data, corpus_file, max_per_task=3, eval_fraction=0.5, pairs_per_document=2)
    )
    data = load_from_disk(str(run_stage(recipe, "synth")))
    report = json.loads((recipe.run_dir / "synth" / "report.json").read_text())["splits"]
    assert max(report["train"]["accepted_by_task"].values()) <= 3
    assert max(report["eval"]["accepted_by_task"].values()) <= 3  # eval_fraction 0.5: the same share
    assert len(data["train"]) == report["train"]["accepted"]


@pytest.mark.parametrize(
    ("synth", "key", "message"),
    [
        ({"corpus": {}}, "synth.corpus.path", "source corpus needs a file"),
        ({"corpus": {"path": "./missing.jsonl"}}, "synth.corpus.path", "does not exist"),
        ({"templates": ["short-lnog"]}, "synth.templates", "did you mean short-long"),
        ({"templates": ["bitext"]}, "synth.templates", "with heuristic templates named 'bitext'"),
        ({"backend": {"type": "openai"}}, "synth.backend.model", "needs the model name"),
        ({"backend": {"type": "openai", "model": "m", "api_key_env": "sk-abc"}}, "synth.backend.api_key_env", "NAME"),
        ({"backend": {"type": "transformers", "model": "offline:nope"}}, "synth.backend.model", "unknown offline LLM"),
        ({"brainstorm": {"rounds": 0}}, "synth.brainstorm.rounds", "expected >= 1"),
        ({"validation": {"near_duplicate_threshold": 2}}, "synth.validation.near_duplicate_threshold", "(0, 1]"),
        ({"eval_fraction": 1.0}, "synth.eval_fraction", "[0, 1)"),
    ],
)
def test_bad_synth_settings_are_refused_naming_the_key(tiny_recipe_data, corpus_file, synth, key, message):
    data = _corpus_recipe(tiny_recipe_data, corpus_file)
    data["synth"] = {**data["synth"], **synth}
    if "corpus" in synth and synth["corpus"] == {}:
        data["synth"]["corpus"] = {}
    with pytest.raises(ConfigError) as error:
        recipe_from_dict(data)
    assert error.value.key == key and message in error.value.message


def test_a_missing_corpus_column_stops_the_stage_naming_the_key_and_the_columns(
    tiny_recipe_data, corpus_file, tmp_path, capsys
):
    import yaml

    data = _corpus_recipe(tiny_recipe_data, corpus_file)
    data["synth"]["corpus"]["text_column"] = "body"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["synth", str(path)]) == 2
    err = capsys.readouterr().err
    assert "synth.corpus.text_column: the corpus has no column 'body'" in err and "'text'" in err


def test_the_templates_command_lists_shipped_and_user_templates(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text(
        "name: mine\nkind: heuristic\ntask_type: title-body\nmethod: title_body\n"
        "description: my own\npair: {query: output.query, document: output.document}\n"
    )
    assert main(["templates", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "short-long" in out and "inverse-cloze" in out and "my own" in out


def test_the_task_column_reaches_the_mined_training_splits(tiny_recipe_data, corpus_file):
    recipe = recipe_from_dict(_corpus_recipe(tiny_recipe_data, corpus_file))
    synthesized = load_from_disk(str(run_stage(recipe, "synth")))["train"]
    mined = load_from_disk(str(run_stage(recipe, "mine")))
    rows = [row for split in mined.values() for row in split]
    assert rows and all("task" in row for row in rows)
    task_of = {(r["query"], r["document"]): r["task"] for r in synthesized}
    assert all(task_of[row["query"], row["document"]] == row["task"] for row in rows)


def test_a_language_placeholder_in_config_name_reads_one_configuration_per_language(tmp_path):
    """A dataset repository with one configuration per language (like wikimedia/wikipedia), here a local folder."""
    from st_retrofit.synth import load_corpus

    repo = tmp_path / "wiki"
    card = ["---", "configs:"]
    for language, texts in {"de": ["Berlin ist eine Stadt.", "Der Rhein ist ein Fluss.", "Ein dritter Satz."],
                            "sw": ["Nairobi ni mji mkuu.", "Mto Nile ni mrefu."]}.items():  # fmt: skip
        (repo / language).mkdir(parents=True)
        (repo / language / "part.jsonl").write_text(
            "".join(json.dumps({"text": t, "title": "T"}) + "\n" for t in texts)
        )
        card += [
            f"- config_name: 20231101.{language}",
            "  data_files:",
            f"  - split: train\n    path: {language}/*.jsonl",
        ]
    (repo / "README.md").write_text("\n".join(card + ["---", ""]))

    corpus = load_corpus(str(repo), config_name="20231101.{language}", languages=["de", "sw"], max_documents=2)
    assert corpus["language"] == ["de", "de", "sw", "sw"]  # two streamed per language, tagged by configuration
    assert corpus["text"][2] == "Nairobi ni mji mkuu."
    with pytest.raises(ConfigError) as info:
        load_corpus(str(repo), config_name="20231101.{language}", languages=["xx"])
    assert info.value.key == "config_name" and "20231101.xx" in info.value.message
