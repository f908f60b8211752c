from __future__ import annotations

import pytest
from datasets import Dataset, concatenate_datasets

from st_retrofit.mining import mine_negatives, negative_columns
from st_retrofit.recipe import MiningConfig
from st_retrofit.synth import build_demo_dataset


@pytest.fixture(scope="module")
def pairs():
    return build_demo_dataset(languages=["en", "ru", "ja"], train_entities=15, eval_entities=2, seed=5)["train"]


def _rows(mined) -> Dataset:
    return concatenate_datasets(list(mined.values()))


def _doc_language(pairs: Dataset) -> dict[str, str]:
    return dict(zip(pairs["document"], pairs["language"], strict=True))


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
    assert row["label"] == pytest.approx(expected, abs=1e-4)
    assert row["label"][1] >= row["label"][2]  # top-ranked negatives first


def test_group_by_keeps_negatives_in_the_query_language_and_splits_by_group(tiny_model, pairs):
    mined, report = mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=2, group_by="language"), seed=0)
    language = _doc_language(pairs)
    assert set(mined) == set(report["groups"]) == {"en", "ru", "ja"}
    for group, split in mined.items():
        for row in split:
            assert {language[row[c]] for c in negative_columns(2)} == {language[row["document"]]} == {group}


def test_without_group_by_negatives_may_cross_languages(tiny_model):
    # Latin-script translations share the town names, so an ungrouped miner finds them as negatives.
    pairs = build_demo_dataset(languages=["en", "de", "fr"], train_entities=15, eval_entities=2, seed=5)["train"]
    mined, _ = mine_negatives(
        pairs, tiny_model, MiningConfig(num_negatives=3, group_by=None, relative_margin=None), seed=0
    )
    assert list(mined) == ["all"]
    mined = mined["all"]
    language = _doc_language(pairs)
    crossing = sum(language[row[c]] != language[row["document"]] for row in mined for c in negative_columns(3))
    assert crossing > 0


def test_mining_is_deterministic_for_a_seed(tiny_model, pairs):
    config = MiningConfig(num_negatives=2, relative_margin=None)
    first, _ = mine_negatives(pairs, tiny_model, config, seed=1)
    second, _ = mine_negatives(pairs, tiny_model, config, seed=1)
    assert {k: v.to_list() for k, v in first.items()} == {k: v.to_list() for k, v in second.items()}


def test_strict_margin_drops_rows_short_of_negatives_and_reports_them(tiny_model, pairs):
    # A relative margin close to 1 keeps only candidates scoring near zero, so most rows fall short.
    mined, report = mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=3, relative_margin=0.99), seed=0)
    dropped = sum(g["dropped_short_of_negatives"] for g in report["groups"].values())
    assert dropped == len(pairs) - len(_rows(mined)) > 0


def test_missing_group_column_is_reported(tiny_model, pairs):
    with pytest.raises(ValueError, match="no column 'domain'"):
        mine_negatives(pairs, tiny_model, MiningConfig(group_by="domain"), seed=0)


def test_embedding_cache_is_written_to_the_given_folder(tiny_model, pairs, tmp_path):
    mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=2), seed=0, cache_folder=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.npy"))
