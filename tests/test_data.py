"""Training-pair sources (Hub-style datasets and local files), content-hash fingerprints and the run manifest."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from st_retrofit import pipeline
from st_retrofit.config import ConfigError
from st_retrofit.data.config import DataConfig, DataSourceConfig
from st_retrofit.data.sources import load_source, training_pairs
from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict

QA = [
    {"question": "When was Mikaro founded?", "answer": "Mikaro was founded in 1723 on the Luse river.", "lang": "en"},
    {"question": "Wann wurde Dabe gegründet?", "answer": "Dabe wurde 1790 am Fluss Kato gegründet.", "lang": "de"},
    {"question": "", "answer": "A row without a question is dropped.", "lang": "en"},
    {"question": "Who runs the bakery?", "answer": "The bakery on the market square is run by the Tanaka family.",
     "lang": "en"},
]  # fmt: skip


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in QA), encoding="utf-8")
    return path


def test_a_local_file_is_mapped_onto_query_and_document(qa_file):
    rows = load_source(
        DataSourceConfig(name="faq", path=str(qa_file), columns={"query": "question", "document": "answer",
                                                                 "language": "lang"})
    )  # fmt: skip
    assert rows.column_names == ["query", "document", "language", "task", "source"]
    assert len(rows) == 3  # the empty question is dropped
    assert rows[1] == {"query": "Wann wurde Dabe gegründet?", "document": QA[1]["answer"], "language": "de",
                       "task": "faq", "source": "faq"}  # fmt: skip


def test_a_saved_dataset_folder_reads_its_split_with_fixed_language_task_and_a_seeded_sample(tmp_path):
    folder = tmp_path / "saved"
    rows = [{"q": f"query {i}", "d": f"document {i}"} for i in range(20)]
    DatasetDict({"train": Dataset.from_list(rows), "dev": Dataset.from_list(rows[:2])}).save_to_disk(str(folder))
    config = DataSourceConfig(name="msmarco", path=str(folder), columns={"query": "q", "document": "d"},
                              language="eng", task="web-search", max_rows=5)  # fmt: skip
    first, again, other = load_source(config, seed=1), load_source(config, seed=1), load_source(config, seed=2)
    assert len(first) == 5 and set(first["language"]) == {"en"} and set(first["task"]) == {"web-search"}
    assert first["query"] == again["query"] != other["query"]
    with pytest.raises(ConfigError, match="splits") as info:
        load_source(
            DataSourceConfig(name="x", path=str(folder), split="test", columns={"query": "q", "document": "d"})
        )
    assert info.value.key == "split"


def test_a_missing_column_names_the_mapping_and_lists_the_columns(qa_file):
    with pytest.raises(ConfigError) as info:
        load_source(DataSourceConfig(name="faq", path=str(qa_file), columns={"query": "question"}))
    assert info.value.key == "columns.document"
    assert "'answer'" in info.value.message and "'document'" in info.value.message


def test_synthetic_pairs_and_sources_are_concatenated_with_their_source(tmp_path, qa_file):
    synth = tmp_path / "synth"
    DatasetDict({"train": Dataset.from_list([{"query": "q", "document": "d", "language": "fr", "entity_id": 3}])}) \
        .save_to_disk(str(synth))  # fmt: skip
    faq = DataSourceConfig(name="faq", path=str(qa_file), columns={"query": "question", "document": "answer"},
                           language="en")  # fmt: skip
    pairs, summary = training_pairs(DataConfig(sources=[faq]), synth)
    assert pairs.column_names == ["query", "document", "language", "task", "source"]
    assert pairs["source"] == ["synthetic", "faq", "faq", "faq"]
    assert pairs["task"][0] == "synthetic"
    assert summary["synthetic"]["rows"] == 1 and summary["faq"]["rows"] == 3 and summary["faq"]["fingerprint"]

    only_sources, _ = training_pairs(DataConfig(synthetic=False, sources=[faq]), synth)
    assert set(only_sources["source"]) == {"faq"}
    untouched, _ = training_pairs(DataConfig(), synth)  # no sources: the synth split as it is
    assert untouched.column_names == ["query", "document", "language", "entity_id"]


@pytest.mark.parametrize(
    ("patch", "key", "text"),
    [
        ({"sources": [{"name": "a", "path": "org/ds", "columns": {"qeury": "q"}}]}, "data.sources[0].columns.qeury",
         "did you mean query"),
        ({"sources": [{"name": "a", "path": "./missing.jsonl"}]}, "data.sources[0].path", "does not exist"),
        ({"sources": [{"name": "a", "path": "org/x"}, {"name": "a", "path": "org/y"}]}, "data.sources", "unique"),
        ({"synthetic": False}, "data.synthetic", "no training pairs"),
        ({"sources": [{"name": "a", "path": "org/x", "max_rows": 0}]}, "data.sources[0].max_rows", ">= 1"),
    ],
)  # fmt: skip
def test_bad_data_sections_name_the_key(tiny_recipe_data, patch, key, text):
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**tiny_recipe_data, "data": patch})
    assert info.value.key == key and text in info.value.message


def test_a_local_source_missing_a_column_is_named_when_the_recipe_loads(tiny_recipe_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**tiny_recipe_data, "data": {"sources": [{"name": "faq", "path": str(bad)}]}})
    assert info.value.key == "data.sources[0].columns.query" and "'question'" in info.value.message


def hub_style_repo(folder):
    """A dataset repository laid out like one on the Hub: two configurations declared in its card."""
    for config, rows in {"triplet": [{"anchor": "a query", "positive": "its passage", "negative": "another"}],
                         "pair": [{"anchor": "q", "positive": "p"}]}.items():  # fmt: skip
        (folder / config).mkdir(parents=True)
        (folder / config / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = ["---", "configs:"]
    for config in ("triplet", "pair"):
        card += [f"- config_name: {config}", "  data_files:", f"  - split: train\n    path: {config}/*.jsonl"]
    (folder / "README.md").write_text("\n".join(card + ["---", ""]))
    return folder


def test_a_hub_style_dataset_reads_its_configuration_and_maps_columns(tmp_path):
    repo = hub_style_repo(tmp_path / "hotpotqa")
    rows = load_source(DataSourceConfig(name="hotpotqa", path=str(repo), config_name="triplet", language="en",
                                        columns={"query": "anchor", "document": "positive"}))  # fmt: skip
    assert rows[0] == {"query": "a query", "document": "its passage", "language": "en", "task": "hotpotqa",
                       "source": "hotpotqa"}  # fmt: skip


def test_a_source_whose_columns_show_only_when_read_is_named_at_run_time(tiny_recipe_data, tmp_path):
    repo = hub_style_repo(tmp_path / "hotpotqa")  # like a Hub dataset: columns unknown until it is read
    source = {"name": "hotpotqa", "path": str(repo), "config_name": "pair", "columns": {"query": "question"}}
    recipe = recipe_from_dict({**tiny_recipe_data, "data": {"sources": [source]}})
    run_pipeline(recipe, stages=["synth"])
    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe, stages=["mine"])
    assert info.value.key == "data.sources[0].columns.query"
    assert "['anchor', 'positive']" in info.value.message


def test_mining_reads_the_sources_and_scopes_negatives_to_them(tiny_recipe_data, qa_file):
    faq = {"name": "faq", "path": str(qa_file), "columns": {"query": "question", "document": "answer"},
           "language": "en"}  # fmt: skip
    data = {**tiny_recipe_data, "data": {"sources": [faq]},
            "mining": {**tiny_recipe_data["mining"], "group_by": "source", "num_negatives": 1}}  # fmt: skip
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth", "mine"])
    mined = load_from_disk(str(recipe.run_dir / "mine" / "dataset"))
    assert set(mined) == {"synthetic", "faq"}
    assert set(mined["faq"]["task"]) == {"faq"}
    assert set(mined["faq"]["negative_1"]) <= {row["answer"] for row in QA}
    sources = json.loads((recipe.run_dir / "mine" / "sources.json").read_text())
    assert sources["faq"]["rows"] == 3


def test_an_edited_source_file_reruns_mining_and_what_follows(tiny_recipe_data, qa_file, counting_stages):
    faq = {"name": "faq", "path": str(qa_file), "columns": {"query": "question", "document": "answer"}}
    data = {**tiny_recipe_data, "data": {"sources": [faq]}}
    run_pipeline(recipe_from_dict(data))
    counting_stages.clear()
    run_pipeline(recipe_from_dict(data))
    assert counting_stages == []
    qa_file.write_text(qa_file.read_text() + json.dumps(QA[0]) + "\n")
    run_pipeline(recipe_from_dict(data))
    assert counting_stages == ["mine", "train", "eval", "publish"]


def test_an_edited_corpus_reruns_synthesis(tiny_recipe_data, tmp_path, counting_stages):
    corpus = tmp_path / "corpus.jsonl"
    # Two documents: a corpus of one is refused when the recipe is checked (nothing to mine negatives from).
    corpus.write_text(
        json.dumps({"text": "Mikaro was founded in 1723.", "language": "en"})
        + "\n"
        + json.dumps({"text": "Dabe lies on the river Sadu.", "language": "en"})
        + "\n"
    )
    data = {**tiny_recipe_data, "synth": {"source": "corpus", "corpus": {"path": str(corpus)}}}
    run_pipeline(recipe_from_dict(data), stages=["synth"])
    before = pipeline.fingerprint(recipe_from_dict(data), "synth")
    corpus.write_text(corpus.read_text().replace("1723", "1724"))
    assert pipeline.fingerprint(recipe_from_dict(data), "synth") != before


def test_the_manifest_records_versions_commit_hardware_seeds_and_dataset_fingerprints(tiny_recipe_data):
    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe, stages=["synth", "mine"])
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    assert {"sentence-transformers", "transformers", "torch", "datasets"} <= set(manifest["packages"])
    assert manifest["hardware"]["cpu_count"] >= 1 and manifest["hardware"]["world_size"] == 1
    assert manifest["seeds"]["seed"] == 7
    assert len(manifest["recipe_hash"]) == 16
    assert set(manifest["datasets"]["synth/dataset"]) == {"train", "eval"}
    assert set(manifest["datasets"]["mine/dataset"]) == {"en", "ru", "ja"}
    assert manifest["sources"]["synthetic"]["rows"] > 0
    assert "git" in manifest  # the commit, or null when the working directory is not a checkout
    assert len(manifest["st_retrofit_git"]["commit"]) == 40  # these tests run from the st-retrofit checkout
    assert manifest["stages"]["train"] == {}


def test_git_state_reads_the_commit_of_a_checkout(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *env, "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", *env, "-C", str(tmp_path), "commit", "-qm", "c"], check=True)
    state = pipeline.git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "f").write_text("y")
    assert pipeline.git_state(tmp_path)["dirty"] is True
    assert pipeline.git_state(tmp_path.parent / "not-a-repo-") is None


def test_local_columns_are_read_from_headers_alone(tmp_path):
    from st_retrofit.dataio import local_columns

    rows = [{"question": "q", "answer": "a"}]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "f.parquet"))
    Dataset.from_list(rows).to_csv(str(tmp_path / "f.csv"), index=False)
    (tmp_path / "f.tsv").write_text("question\tanswer\nq\ta\n")
    (tmp_path / "f.jsonl").write_text("\n" + json.dumps(rows[0]) + "\n")
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    for name in ("f.parquet", "f.csv", "f.tsv", "f.jsonl", "saved"):
        assert local_columns(tmp_path / name) == ["question", "answer"], name
    assert local_columns("org/hub-dataset") is None


def test_content_hashes_are_read_once_and_follow_edits(tmp_path, monkeypatch):
    import st_retrofit.dataio as dataio

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a"}\n')
    reads = []
    real = dataio.content_hash
    monkeypatch.setattr(dataio, "content_hash", lambda paths: reads.append(paths) or real(paths))
    first = dataio.cached_content_hash(corpus)
    assert dataio.cached_content_hash(corpus) == first and len(reads) == 1  # remembered across calls (and runs)
    corpus.write_text('{"text": "b"}\n')
    assert dataio.cached_content_hash(corpus) != first and len(reads) == 2
