"""The LLM-free backend on a multilingual corpus: every method, every script, deterministic."""

from __future__ import annotations

import random

import pytest

from st_retrofit.synth import SyntheticDataGenerator, TemplateLibrary, load_corpus
from st_retrofit.synth.backends.heuristic import HeuristicError, fact, inverse_cloze, random_crop, sentence_spans
from st_retrofit.synth.config import ValidationConfig


def _generate(corpus_file, templates, seed=0, **kwargs):
    library = TemplateLibrary()
    generator = SyntheticDataGenerator(
        None, library.select(templates, kind="heuristic"), library, ValidationConfig(), seed=seed, **kwargs
    )
    return generator.generate(load_corpus(corpus_file))


def test_every_heuristic_template_makes_pairs_in_every_language_of_the_corpus(corpus_file):
    pairs, report = _generate(corpus_file, ["all"], pairs_per_document=4)
    assert set(pairs["language"]) == {"en", "de", "fr", "ru", "ja", "zh", "es"}  # es identified from the text
    assert set(pairs["template"]) == {"title-body-heuristic", "inverse-cloze", "random-crop", "fact-heuristic"}
    assert set(pairs["backend"]) == {"heuristic"} and report.requests["heuristic"] == report.jobs
    # The Spanish passage has no title: only the two title-free templates apply to it.
    assert set(pairs.filter(lambda r: r["id"] == "es-1")["template"]) <= {"inverse-cloze", "random-crop"}
    by_template = {row["template"]: row for row in pairs.filter(lambda r: r["id"] == "ja-1")}
    assert by_template["title-body-heuristic"]["query"] == "京都"
    assert by_template["fact-heuristic"]["query"] in {"京都とは何ですか？", "京都について教えてください", "京都の概要"}
    again, _ = _generate(corpus_file, ["all"], pairs_per_document=4)
    assert again.to_list() == pairs.to_list()
    other_seed, _ = _generate(corpus_file, ["all"], pairs_per_document=4, seed=1)
    assert other_seed.to_list() != pairs.to_list()


def test_sentences_split_in_latin_cyrillic_and_cjk_punctuation():
    text = "Берлин — столица. Там живут люди!  Why? 京都は古い。寺が多い！"
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Берлин — столица.", "Там живут люди!", "Why?", "京都は古い。", "寺が多い！"
    ]  # fmt: skip


def test_inverse_cloze_removes_the_query_sentence_unless_kept():
    context = {"passage": "One is first. Two is second. Three is third. Four is fourth."}
    removed = [inverse_cloze(context, random.Random(s), keep_probability=0.0) for s in range(20)]
    assert all(p["query"] not in p["document"] and p["query"] in context["passage"] for p in removed)
    kept = inverse_cloze(context, random.Random(0), keep_probability=1.0)
    assert kept["document"] == context["passage"]
    with pytest.raises(HeuristicError, match="needs 3"):
        inverse_cloze({"passage": "Only one sentence."}, random.Random(0))


def test_random_crop_cuts_word_spans_and_character_spans_for_scripts_without_spaces():
    words = " ".join(f"w{i}" for i in range(100))
    pair = random_crop({"passage": words}, random.Random(3), min_ratio=0.1, max_ratio=0.2)
    for crop in pair.values():
        assert crop in words and 10 <= len(crop.split()) <= 20
    chinese = "上海是中国最大的城市之一它位于长江入海口上海有很多高楼大厦外滩是著名的景点"
    pair = random_crop({"passage": chinese}, random.Random(3), min_ratio=0.2, max_ratio=0.3)
    assert all(crop in chinese and " " not in crop for crop in pair.values())


def test_fact_questions_follow_the_passage_language_and_answer_with_its_lead():
    context = {"passage": "Lyon est une ville. Elle est belle. Elle est grande.", "title": "Lyon", "language": "fra"}
    pair = fact(context, random.Random(0), questions={"fr": ["Qu'est-ce que {{ title }} ?"]}, lead_sentences=2)
    assert pair == {"query": "Qu'est-ce que Lyon ?", "document": "Lyon est une ville. Elle est belle."}
    with pytest.raises(HeuristicError, match="no question templates for language 'fr'"):
        fact(context, random.Random(0), questions={"en": ["What is {{ title }}?"]})
