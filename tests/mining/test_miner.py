from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset, concatenate_datasets

from st_retrofit.mining import (
    HardNegativeMiner,
    mine_negatives,
    negative_columns,
    plot_score_distributions,
    pool_to_ntuple,
)
from st_retrofit.mining.config import MiningConfig
from st_retrofit.mining.filters import normalize_text
from st_retrofit.synth import build_demo_dataset


@pytest.fixture(scope="module")
def pairs():
    return build_demo_dataset(languages=["en", "ru", "ja"], train_entities=15, eval_entities=2, seed=5)["train"]


def _rows(mined) -> Dataset:
    return concatenate_datasets(list(mined.values()))


def _doc_language(pairs: Dataset) -> dict[str, str]:
    return dict(zip(pairs["document"], pairs["language"], strict=True))


def _config(**kwargs) -> MiningConfig:
    return MiningConfig(**{"relative_margin": None, "group_by": None, **kwargs})


def _mine(model, pairs, tmp_path, seed=0, corpus=None, cross_encoder=None, output_dir=None, **kwargs):
    miner = HardNegativeMiner(
        model, _config(**kwargs), seed=seed, cross_encoder=cross_encoder, cache_dir=tmp_path / "cache",
        show_progress_bar=False,
    )  # fmt: skip
    return miner.mine(pairs, corpus=corpus, output_dir=output_dir)


def test_every_row_gets_distinct_negatives_that_are_not_its_positive(tiny_model, pairs):
    mined, report = mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=3, relative_margin=None), seed=0)
    mined = _rows(mined)
    assert mined.column_names == ["query", "document", *negative_columns(3), "label"]
    assert len(mined) == report["rows_out"] == len(pairs)
    for row in mined:
        negatives = [row[c] for c in negative_columns(3)]
        assert row["document"] not in negatives
        assert len(set(negatives)) == 3


def test_label_holds_the_teacher_scores_of_positive_and_negatives(tiny_model, pairs):
    mined, _ = mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=2, relative_margin=None), seed=0)
    row = mined["en"][0]
    query, texts = tiny_model.encode_query([row["query"]]), [row["document"], row["negative_1"], row["negative_2"]]
    expected = tiny_model.similarity(query, tiny_model.encode_document(texts))[0].tolist()
    assert row["label"] == pytest.approx(expected, abs=2e-3)  # the cache stores fp16
    assert row["label"][1] >= row["label"][2]  # top-ranked negatives first


def test_output_keeps_the_input_row_order(tiny_model, pairs, tmp_path):
    mined = _mine(tiny_model, pairs, tmp_path, num_negatives=2, shard_size=4).dataset["all"]
    assert mined["query"] == list(pairs["query"]) and mined["document"] == list(pairs["document"])


def test_matches_sentence_transformers_mine_hard_negatives_with_the_same_settings(tiny_model, pairs, tmp_path):
    from sentence_transformers.util import mine_hard_negatives

    en = pairs.filter(lambda g: g == "en", input_columns="language")
    settings = {"num_negatives": 3, "range_max": 10}
    st = mine_hard_negatives(en.select_columns(["query", "document"]), tiny_model, output_format="n-tuple",
                             verbose=False, **settings)  # fmt: skip
    ours = _mine(tiny_model, en, tmp_path, **settings).dataset
    ours = ours["all"] if len(ours) else Dataset.from_dict({"query": []})
    columns = negative_columns(3)
    st_rows = {r["query"]: [r[c] for c in columns] for r in st}
    our_rows = {r["query"]: [r[c] for c in columns] for r in ours}
    assert st_rows.keys() == our_rows.keys()
    shared = sum(len(set(st_rows[q]) & set(our_rows[q])) for q in st_rows)
    # The random tiny model scores every pair within a few hundredths, where fp16 storage can swap near-ties;
    # benchmarks/mining.py measures the overlap on MiniLM (99.9%).
    assert shared >= 0.9 * 3 * len(st_rows)


def test_group_by_keeps_negatives_in_the_query_language_and_splits_by_group(tiny_model, pairs):
    config = MiningConfig(num_negatives=2, group_by="language", relative_margin=None)
    mined, report = mine_negatives(pairs, tiny_model, config, seed=0)
    language = _doc_language(pairs)
    assert set(mined) == set(report["groups"]) == {"en", "ru", "ja"}
    for group, split in mined.items():
        for row in split:
            assert {language[row[c]] for c in negative_columns(2)} == {language[row["document"]]} == {group}


def test_without_group_by_negatives_may_cross_languages(tiny_model, tmp_path):
    # Latin-script translations share the town names, so an ungrouped miner finds them as negatives.
    pairs = build_demo_dataset(languages=["en", "de", "fr"], train_entities=15, eval_entities=2, seed=5)["train"]
    mined = _mine(tiny_model, pairs, tmp_path, num_negatives=3).dataset
    assert list(mined) == ["all"]
    language = _doc_language(pairs)
    crossing = sum(language[row[c]] != language[row["document"]] for row in mined["all"] for c in negative_columns(3))
    assert crossing > 0


def test_scoping_by_any_column_draws_from_a_grouped_extra_corpus(tiny_model, tmp_path):
    pairs = Dataset.from_dict({
        "query": ["river towns", "mountain towns", "tax law", "tax rates"],
        "document": ["Towns on the river.", "Towns in the hills.", "The law of taxes.", "Rates of the tax."],
        "task": ["geo", "geo", "legal", "legal"],
    })  # fmt: skip
    corpus = Dataset.from_dict({
        "text": ["Lakes and towns.", "Valleys and towns.", "Court rulings.", "Tax forms.", "Unused text."],
        "task": ["geo", "geo", "legal", "legal", "other"],
    })  # fmt: skip
    result = _mine(tiny_model, pairs, tmp_path, corpus=corpus, num_negatives=2, group_by="task")
    geo = {"Towns on the river.", "Towns in the hills.", "Lakes and towns.", "Valleys and towns."}
    assert set(result.dataset) == {"geo", "legal"}
    for group, split in result.dataset.items():
        for row in split:
            negatives = {row["negative_1"], row["negative_2"]}
            assert negatives <= geo if group == "geo" else not negatives & geo
            assert "Unused text." not in negatives


def test_a_plain_text_corpus_cannot_be_scoped(tiny_model, pairs, tmp_path):
    with pytest.raises(ValueError, match="needs the corpus as a Dataset with a 'language' column"):
        _mine(tiny_model, pairs, tmp_path, corpus=["x"], group_by="language")


def test_several_positives_are_all_excluded_and_the_lowest_sets_the_margin(tiny_model, tmp_path):
    docs = [f"The town number {i} lies on river {i % 3} with {i * 100} people." for i in range(12)]
    pairs = Dataset.from_dict({"query": ["towns on rivers"] * 3 + ["town 7"], "document": docs[:3] + [docs[7]]})
    result = _mine(tiny_model, pairs, tmp_path, corpus=docs, num_negatives=3, relative_margin=0.01, output="pool")
    multi = [r for r in result.dataset["all"] if r["query"] == "towns on rivers"]
    assert len(multi) == 3  # one row per (query, positive), sharing one pool
    assert multi[0]["negatives"] == multi[1]["negatives"] == multi[2]["negatives"]
    assert not set(multi[0]["negatives"]) & set(docs[:3])
    lowest = min(r["label"][0] for r in multi)
    assert all(score <= lowest - abs(lowest) * 0.01 + 1e-6 for score in multi[0]["label"][1:])
    assert len(multi[0]["negatives"]) + 3 + result.report["removed"]["relative_margin"] >= 10


def test_normalized_duplicates_of_a_positive_or_the_query_never_become_negatives(tiny_model, tmp_path):
    pairs = Dataset.from_dict({"query": ["Where is Mikaro?"], "document": ["Mikaro lies on the Luse river."]})
    corpus = ["MIKARO lies on the Luse river!", "mikaro  lies on the luse river", "where is mikaro",
              "Dabe lies on the Kato river.", "Dabe lies on the Kato river", "Sadu is a region."]  # fmt: skip
    result = _mine(tiny_model, pairs, tmp_path, corpus=corpus, num_negatives=2, output="pool", range_max=10)
    pool = result.dataset["all"][0]["negatives"]
    assert {normalize_text(t) for t in pool} == {"dabe lies on the kato river", "sadu is a region"}
    assert len(pool) == 2  # the Dabe duplicate appears once
    assert result.report["excluded"]["duplicate"] == 4


def test_pool_output_lists_ranked_candidates_with_ids_into_the_corpus(tiny_model, pairs, tmp_path):
    result = _mine(tiny_model, pairs, tmp_path, num_negatives=2, output="pool", pool_size=6, range_max=10)
    split = result.dataset["all"]
    assert split.column_names == ["query", "document", "negatives", "negative_ids", "label"]
    for row in split:
        assert len(row["negatives"]) == 6 and len(row["label"]) == 7
        assert [result.corpus[i]["text"] for i in row["negative_ids"]] == row["negatives"]
        assert row["label"][1:] == sorted(row["label"][1:], reverse=True)
    ntuple = pool_to_ntuple(split, 2)
    assert ntuple.column_names == ["query", "document", "negative_1", "negative_2", "label"]
    assert ntuple[0]["negative_2"] == split[0]["negatives"][1] and len(ntuple[0]["label"]) == 3


def test_range_min_skips_the_best_candidates(tiny_model, pairs, tmp_path):
    top = _mine(tiny_model, pairs, tmp_path, num_negatives=4, output="pool", range_max=12).dataset["all"]
    skipped = _mine(tiny_model, pairs, tmp_path, num_negatives=2, output="pool", range_min=2, range_max=12)
    for a, b in zip(top, skipped.dataset["all"], strict=True):
        assert b["negatives"] == a["negatives"][2:]


def test_random_sampling_is_seeded_and_does_not_depend_on_the_shard_size(tiny_model, pairs, tmp_path):
    settings = {"num_negatives": 2, "sampling": "random", "range_max": 10}
    a = _mine(tiny_model, pairs, tmp_path, seed=3, shard_size=4, **settings).dataset["all"]
    b = _mine(tiny_model, pairs, tmp_path, seed=3, shard_size=1000, **settings).dataset["all"]
    c = _mine(tiny_model, pairs, tmp_path, seed=4, **settings).dataset["all"]
    top = _mine(tiny_model, pairs, tmp_path, num_negatives=2, range_max=10).dataset["all"]
    assert a.to_list() == b.to_list()
    assert a.to_list() != c.to_list() and a.to_list() != top.to_list()


@pytest.fixture
def tiny_cross_encoder(tiny_model_path):
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    return CrossEncoder(str(tiny_model_path.parent / "hf"), num_labels=1, device="cpu")


def test_a_cross_encoder_always_rescores_even_without_margins(tiny_model, tiny_cross_encoder, pairs, tmp_path):
    result = _mine(tiny_model, pairs, tmp_path, cross_encoder=tiny_cross_encoder, num_negatives=3, range_max=8)
    plain = _mine(tiny_model, pairs, tmp_path, num_negatives=3, range_max=8).dataset["all"]
    rows = result.dataset["all"]
    assert result.report["cross_encoder"]["fingerprint"]
    for row in rows.select(range(5)):
        texts = [row["document"]] + [row[c] for c in negative_columns(3)]
        expected = tiny_cross_encoder.predict([(row["query"], t) for t in texts])
        assert row["label"] == pytest.approx(expected.tolist(), abs=1e-4)
        assert row["label"][1:] == sorted(row["label"][1:], reverse=True)
    assert rows["negative_1"] != plain["negative_1"]


def test_a_killed_run_resumes_from_its_shards_and_gives_the_same_result(tiny_model, pairs, tmp_path, monkeypatch):
    settings = {"num_negatives": 2, "group_by": "language", "shard_size": 4, "sampling": "random", "range_max": 8}
    expected = _mine(tiny_model, pairs, tmp_path, output_dir=tmp_path / "a", **settings)

    written = []
    real_write = HardNegativeMiner._write_shard

    def killed_after_five_shards(stem, columns, stats):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(stem)
        real_write(stem, columns, stats)

    monkeypatch.setattr(HardNegativeMiner, "_write_shard", staticmethod(killed_after_five_shards))
    with pytest.raises(KeyboardInterrupt):
        _mine(tiny_model, pairs, tmp_path, output_dir=tmp_path / "b", **settings)
    monkeypatch.setattr(HardNegativeMiner, "_write_shard", staticmethod(real_write))
    resumed = _mine(tiny_model, pairs, tmp_path, output_dir=tmp_path / "b", **settings)
    assert resumed.report["shards"] == {"total": 12, "resumed": 5}
    assert {k: v.to_list() for k, v in resumed.dataset.items()} == {
        k: v.to_list() for k, v in expected.dataset.items()
    }
    assert resumed.report["cache"]["encoded"] == 0


def test_changed_settings_start_the_shards_over(tiny_model, pairs, tmp_path):
    _mine(tiny_model, pairs, tmp_path, output_dir=tmp_path / "run", num_negatives=2, shard_size=8)
    again = _mine(tiny_model, pairs, tmp_path, output_dir=tmp_path / "run", num_negatives=2, shard_size=8)
    changed = _mine(tiny_model, pairs, tmp_path, output_dir=tmp_path / "run", num_negatives=3, shard_size=8)
    assert again.report["shards"]["resumed"] == again.report["shards"]["total"]
    assert changed.report["shards"]["resumed"] == 0
    assert changed.dataset["all"].column_names == ["query", "document", *negative_columns(3), "label"]


def test_strict_margin_drops_rows_short_of_negatives_and_reports_them(tiny_model, pairs, tmp_path):
    # A relative margin close to 1 keeps only candidates scoring near zero, so most rows fall short.
    result = _mine(tiny_model, pairs, tmp_path, num_negatives=3, relative_margin=0.99)
    kept = sum(len(split) for split in result.dataset.values())
    report = result.report
    assert report["rows_short_of_negatives"] == report["rows_dropped"] == len(pairs) - kept > 0
    assert report["removed"]["relative_margin"] > 0
    assert sum(report["available_negatives"]) == report["unique_queries"]


def test_report_names_the_teacher_and_describes_the_scores(tiny_model, pairs, tmp_path):
    result = _mine(tiny_model, pairs, tmp_path, num_negatives=2)
    report = json.loads(json.dumps(result.report))  # JSON-ready
    assert len(report["teacher"]["fingerprint"]) == 40
    assert report["settings"]["num_negatives"] == 2 and report["range_max"] == 2
    assert report["scores"]["positive"]["count"] == len(pairs)
    assert report["scores"]["negative"]["count"] == 2 * len(pairs)
    assert sum(report["histogram"]["negative"]) == 2 * len(pairs)
    assert report["cache"]["encoded"] + report["cache"]["reused"] > 0
    assert plot_score_distributions(report, tmp_path / "scores.png").stat().st_size > 0


def test_empty_or_non_text_values_are_reported_with_their_row(tiny_model, tmp_path):
    pairs = Dataset.from_dict({"query": ["fine", "  "], "document": ["a", "b"]})
    with pytest.raises(ValueError, match="column 'query' row 1"):
        _mine(tiny_model, pairs, tmp_path)


def test_missing_group_column_is_reported(tiny_model, pairs):
    with pytest.raises(ValueError, match="no column 'domain'.*mining.group_by"):
        mine_negatives(pairs, tiny_model, MiningConfig(group_by="domain"), seed=0)


def test_embedding_cache_is_shared_across_runs_in_the_given_folder(tiny_model, pairs, tmp_path):
    _, first = mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=2), seed=0, cache_dir=tmp_path / "c")
    _, second = mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=3), seed=0, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").glob("*/*.keys.npy"))
    assert first["cache"]["encoded"] > 0 and second["cache"]["encoded"] == 0
    assert np.isclose(second["cache"]["reused"], first["cache"]["encoded"] + first["cache"]["reused"])


def test_round_trip_keeps_the_pairs_whose_document_the_teacher_ranks_in_the_top_k(tiny_model, pairs, tmp_path):
    k = 3
    result = _mine(tiny_model, pairs, tmp_path, num_negatives=1, range_max=10, round_trip_top_k=k)
    kept, report = set(_rows(result.dataset)["query"]), result.report
    # The teacher's rank of each pair's document among all documents, computed here from the model itself.
    documents = sorted(set(pairs["document"]))
    scores = tiny_model.similarity(tiny_model.encode_query(pairs["query"]), tiny_model.encode_document(documents))
    checked = 0
    for row, query in enumerate(pairs["query"]):
        row_scores = scores[row].numpy()
        positive = row_scores[documents.index(pairs["document"][row])]
        others = np.sort(np.delete(row_scores, documents.index(pairs["document"][row])))[::-1]
        if abs(others[k - 1] - positive) < 2e-3:  # a near tie: the cache's fp16 may decide it either way
            continue
        assert (query in kept) == (positive > others[k - 1]), query
        checked += 1
    assert checked >= 0.6 * len(pairs) and 0 < len(kept) < len(pairs)
    trip = report["round_trip"]
    assert trip["top_k"] == k and trip["kept"] == len(kept) and trip["kept"] + trip["dropped"] == len(pairs)
    by_language = trip["kept_share_by_language"]
    for language in ("en", "ru", "ja"):
        rows = [q for q, lang in zip(pairs["query"], pairs["language"], strict=True) if lang == language]
        assert by_language[language] == pytest.approx(sum(q in kept for q in rows) / len(rows), abs=1e-4)


def test_round_trip_top_k_beyond_the_retrieved_range_is_refused():
    from st_retrofit.config import ConfigError

    with pytest.raises(ConfigError, match="round_trip_top_k: expected <= range_max \\(5\\)"):
        MiningConfig(num_negatives=1, range_max=5, round_trip_top_k=6)
