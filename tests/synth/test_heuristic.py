"""The LLM-free backend on a multilingual corpus: every method, every script, deterministic."""

from __future__ import annotations

import json
import random

import pytest

from st_retrofit.synth import SyntheticDataGenerator, TemplateLibrary, load_corpus
from st_retrofit.synth.backends.heuristic import (
    HeuristicError,
    fact,
    inverse_cloze,
    lead_sentence,
    random_crop,
    sentence_spans,
)
from st_retrofit.synth.config import ValidationConfig


def _generate(corpus_file, templates, seed=0, **kwargs):
    library = TemplateLibrary()
    generator = SyntheticDataGenerator(
        None, library.select(templates, kinds=["heuristic"]), library, ValidationConfig(), seed=seed, **kwargs
    )
    return generator.generate(load_corpus(corpus_file))


def test_every_heuristic_template_makes_pairs_in_every_language_of_the_corpus(corpus_file):
    pairs, report = _generate(corpus_file, ["all"], pairs_per_document=5)
    assert set(pairs["language"]) == {"en", "de", "fr", "ru", "ja", "zh", "es"}  # es identified from the text
    # parallel-lead needs a parallel_column: without one it applies to no passage.
    assert set(pairs["template"]) == {
        "title-body-heuristic", "inverse-cloze", "lead-sentence", "random-crop", "fact-heuristic"
    }  # fmt: skip
    assert set(pairs["backend"]) == {"heuristic"} and report.requests["heuristic"] == report.jobs
    # The Spanish passage has no title: only the two title-free templates apply to it.
    assert set(pairs.filter(lambda r: r["id"] == "es-1")["template"]) <= {
        "inverse-cloze",
        "lead-sentence",
        "random-crop",
    }
    by_template = {row["template"]: row for row in pairs.filter(lambda r: r["id"] == "ja-1")}
    assert by_template["title-body-heuristic"]["query"] == "京都"
    assert by_template["fact-heuristic"]["query"] in {"京都とは何ですか？", "京都について教えてください", "京都の概要"}
    again, _ = _generate(corpus_file, ["all"], pairs_per_document=5)
    assert again.to_list() == pairs.to_list()
    other_seed, _ = _generate(corpus_file, ["all"], pairs_per_document=5, seed=1)
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


def test_lead_sentence_is_the_query_and_the_rest_the_document():
    context = {"passage": "tar saves many files together into an archive. It can also restore them. Options follow."}
    pair = lead_sentence(context, random.Random(0), keep_probability=0.0)
    assert pair == {"query": "tar saves many files together into an archive.",
                    "document": "It can also restore them. Options follow."}  # fmt: skip
    assert lead_sentence(context, random.Random(0), keep_probability=1.0)["document"] == context["passage"]
    with pytest.raises(HeuristicError, match="needs 2"):
        lead_sentence({"passage": "Only one sentence."}, random.Random(0))


PAGES = [  # (id, language, page, text): two pages in three languages, one page only in English
    ("en/tar.1", "en", "tar.1", "tar saves many files together into a single tape or disk archive. It can restore "
                                "individual files from the archive."),
    ("de/tar.1", "de", "tar.1", "tar speichert viele Dateien zusammen in einem einzigen Band- oder Plattenarchiv. "
                                "Es kann einzelne Dateien aus dem Archiv wiederherstellen."),
    ("fr/tar.1", "fr", "tar.1", "tar enregistre plusieurs fichiers ensemble dans une seule archive sur bande ou "
                                "disque. Il peut restaurer des fichiers individuels depuis l'archive."),
    ("en/grep.1", "en", "grep.1", "grep searches for patterns in each file given on the command line. A pattern is "
                                  "a regular expression."),
    ("de/grep.1", "de", "grep.1", "grep durchsucht jede auf der Befehlszeile angegebene Datei nach Mustern. Ein "
                                  "Muster ist ein regulärer Ausdruck."),
    ("en/ls.1", "en", "ls.1", "ls lists information about the files in the current directory by default. Entries "
                              "are sorted alphabetically."),
]  # fmt: skip


def test_parallel_lead_pairs_a_translation_lead_with_the_target_language_document(tmp_path):
    path = tmp_path / "pages.jsonl"
    keys = ("id", "language", "page", "text")
    lines = [json.dumps(dict(zip(keys, row, strict=True)), ensure_ascii=False) for row in PAGES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    library = TemplateLibrary()
    templates = library.select(["lead-sentence", "parallel-lead"])
    generator = SyntheticDataGenerator(
        None, templates, library, ValidationConfig(), seed=0, pairs_per_document=2, target_languages=["en"]
    )
    pairs, report = generator.generate(load_corpus(path, title_column=None, parallel_column="page"))
    texts = {doc_id: text for doc_id, _, _, text in PAGES}
    parallel = pairs.filter(lambda r: r["template"] == "parallel-lead").to_list()
    # Every translated page gives one pair into English: its own lead sentence against the English page.
    assert sorted((r["id"], r["query_language"], r["language"]) for r in parallel) == [
        ("de/grep.1", "de", "en"), ("de/tar.1", "de", "en"), ("fr/tar.1", "fr", "en")
    ]  # fmt: skip
    for row in parallel:
        assert texts[row["id"]].startswith(row["query"]) and row["document"] == texts["en/" + row["id"][3:]]
        assert row["task"] == "cross-lingual"
    # The same lead sentence is also the query of its own page's lead-sentence pair: not a duplicate, since the
    # documents are in different languages.
    lead = {r["id"]: r["query"] for r in pairs.filter(lambda r: r["template"] == "lead-sentence")}
    assert lead["de/tar.1"] == next(r["query"] for r in parallel if r["id"] == "de/tar.1")
    assert report.to_dict()["accepted_by_language"] == {"de": 2, "de-en": 2, "en": 3, "fr": 1, "fr-en": 1}

    # Caps count pairs across languages per language pair.
    capped = SyntheticDataGenerator(
        None, templates, library, ValidationConfig(), seed=0, pairs_per_document=2, target_languages=["en"],
        max_per_language=1,
    )  # fmt: skip
    _, capped_report = capped.generate(load_corpus(path, title_column=None, parallel_column="page"))
    assert capped_report.to_dict()["accepted_by_language"] == {"de": 1, "de-en": 1, "en": 1, "fr": 1, "fr-en": 1}


def test_a_parallel_column_the_corpus_lacks_is_named(tmp_path):
    from st_retrofit.config import ConfigError

    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "One. Two."}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="parallel_column.*no column 'page'"):
        load_corpus(path, parallel_column="page")
