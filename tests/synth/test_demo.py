from __future__ import annotations

import unicodedata

import pytest

from st_retrofit.synth import LANGUAGES, build_demo_dataset
from st_retrofit.synth.demo import QUERY_KINDS, generate_towns


def _scripts(text: str) -> set[str]:
    return {unicodedata.name(c).split()[0] for c in text if c.isalpha()}


def test_same_seed_gives_identical_data():
    a = build_demo_dataset(train_entities=8, eval_entities=4, seed=3)
    b = build_demo_dataset(train_entities=8, eval_entities=4, seed=3)
    assert a["train"].to_list() == b["train"].to_list()
    assert a["eval"].to_list() == b["eval"].to_list()


def test_other_seed_gives_other_data():
    a = build_demo_dataset(train_entities=8, eval_entities=4, seed=3)
    b = build_demo_dataset(train_entities=8, eval_entities=4, seed=4)
    assert a["train"]["document"] != b["train"]["document"]


def test_covers_at_least_six_languages_in_latin_and_non_latin_scripts():
    data = build_demo_dataset(train_entities=4, eval_entities=2)
    assert len(set(data["train"]["language"])) >= 6
    scripts = set()
    for row in data["train"]:
        scripts |= _scripts(row["document"])
    assert {"LATIN", "CYRILLIC", "KATAKANA", "CJK"} <= scripts


def test_held_out_entities_never_appear_in_train():
    data = build_demo_dataset(train_entities=20, eval_entities=10)
    assert not set(data["train"]["entity_id"]) & set(data["eval"]["entity_id"])
    assert not set(data["train"]["document"]) & set(data["eval"]["document"])


def test_queries_per_document_gives_distinct_queries():
    data = build_demo_dataset(languages=["de"], train_entities=5, eval_entities=2, queries_per_document=3)
    assert len(data["train"]) == 15
    for entity in range(5):
        rows = data["train"].filter(lambda e, entity=entity: e == entity, input_columns="entity_id")
        assert len(set(rows["query"])) == 3
        assert len(set(rows["document"])) == 1


def test_document_states_the_fact_the_query_asks_for():
    data = build_demo_dataset(languages=["en"], train_entities=30, eval_entities=2, queries_per_document=4)
    towns = {t.id: t for t in generate_towns(32, seed=42)}
    for row in data["train"]:
        assert str(towns[row["entity_id"]].year) in row["document"]


def test_town_names_are_unique():
    towns = generate_towns(500, seed=1)
    assert len({t.name for t in towns}) == 500


def test_unknown_language_is_rejected():
    with pytest.raises(ValueError, match="unknown demo language"):
        build_demo_dataset(languages=["en", "tlh"])


def test_all_languages_have_every_query_kind():
    data = build_demo_dataset(train_entities=2, eval_entities=2, queries_per_document=len(QUERY_KINDS))
    for language in LANGUAGES:
        templates = set(
            data["train"].filter(lambda x, language=language: x == language, input_columns="language")["template"]
        )
        assert templates == {f"town/{kind}" for kind in QUERY_KINDS}
