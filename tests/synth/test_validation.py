"""Parsing and validation rules, caps per language and task, and language-code handling."""

from __future__ import annotations

import json

import pytest

from st_retrofit.synth import (
    OpenAICompatibleBackend,
    PairValidator,
    SyntheticDataGenerator,
    TemplateLibrary,
    load_corpus,
    normalize_language,
    parse_json_answer,
)
from st_retrofit.synth.config import BrainstormConfig, ValidationConfig

SCHEMA = {"type": "object", "required": ["query"], "properties": {"query": {"type": "string", "minLength": 2}}}
PASSAGE = "Die Fotosynthese ist ein Prozess, bei dem Pflanzen Lichtenergie in chemische Energie umwandeln."
CONTEXT = {"passage": PASSAGE, "title": "", "language": "de", "target_language": "de"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"query": "Wie funktioniert Fotosynthese?"}', "Wie funktioniert Fotosynthese?"),
        ('Sure! ```json\n{"query": "Was ist Fotosynthese?"}\n``` Hope it helps', "Was ist Fotosynthese?"),
        ('Here: {"note": {"x": 1}} and {"query": "Pflanzen und Licht {Energie}"}', "Pflanzen und Licht {Energie}"),
    ],
)
def test_the_first_object_the_schema_accepts_is_taken_from_prose_fences_and_several_objects(text, expected):
    assert parse_json_answer(text, SCHEMA) == ({"query": expected}, None)


@pytest.mark.parametrize(
    ("text", "rule"),
    [('{"query": "Was ist', "invalid_json"), ("no JSON here", "invalid_json"), ('{"query": ""}', "schema"),
     ('{"question": "Was?"}', "schema"), ('["query"]', "invalid_json")],
)  # fmt: skip
def test_unparsable_or_off_schema_answers_name_their_rule(text, rule):
    assert parse_json_answer(text, SCHEMA) == (None, rule)


def _check(validator, query, template="short-long", context=CONTEXT, **output):
    template = TemplateLibrary()[template]
    return validator.check(template, json.dumps({"query": query, **output}, ensure_ascii=False), context)


def test_each_rule_rejects_what_it_names():
    validator = PairValidator(ValidationConfig())
    assert _check(validator, "Wie wandeln Pflanzen Licht in Energie um?") == (
        {"query": "Wie wandeln Pflanzen Licht in Energie um?", "document": PASSAGE}, None
    )  # fmt: skip
    assert _check(validator, "x") == (None, "schema")  # the schema's minLength
    assert _check(validator, "   ") == (None, "empty")
    assert _check(validator, "xy") == (None, "length")  # the template's bounds
    assert _check(validator, "x" * 500)[1] == "length"
    assert _check(validator, PASSAGE)[1] == "copy"
    assert _check(validator, "bei dem Pflanzen Lichtenergie in chemische Energie")[1] == "copied_passage"
    assert _check(validator, "How do plants turn sunlight into chemical energy?")[1] == "language"
    assert _check(validator, "wie wandeln pflanzen licht in energie um")[1] == "duplicate"  # case, punctuation
    assert _check(validator, "Wie wandeln Pflanzen Licht in Energie umm?")[1] == "near_duplicate"  # a typo
    assert _check(validator, "Welche Rolle spielen Chloroplasten?")[1] is None


def test_rules_can_be_switched_off_and_cross_lingual_queries_are_checked_against_the_target_language():
    validator = PairValidator(ValidationConfig(check_language=False, near_duplicate_threshold=None))
    assert _check(validator, "How do plants turn sunlight into chemical energy?")[1] is None
    assert _check(validator, "How do plants turn sunlight into chemical energy, please?")[1] is None
    strict = PairValidator(ValidationConfig())
    cross = CONTEXT | {"target_language": "en"}
    assert _check(strict, "How do plants turn sunlight into chemical energy?", "cross-lingual", cross)[1] is None
    assert _check(strict, "Wie wandeln Pflanzen Licht in Energie um?", "cross-lingual", cross)[1] == "language"


def test_short_ambiguous_queries_pass_the_language_check_below_the_confidence():
    validator = PairValidator(ValidationConfig(language_confidence=0.5))
    assert _check(validator, "Fotosynthese Chloroplast")[1] is None


def test_language_codes_are_normalized():
    assert [normalize_language(c) for c in ("de-DE", "deu", "deu-Latn", "DE", "zho_Hans", "pcm")] == [
        "de", "de", "de", "de", "zh", "pcm"
    ]  # fmt: skip


def test_caps_per_language_and_task_stop_requests_for_full_buckets(fake_server, corpus_file, tmp_path):
    library = TemplateLibrary()
    with fake_server() as server:
        generator = SyntheticDataGenerator(
            OpenAICompatibleBackend("m", base_url=server.base_url, concurrency=2),
            library.select(["short-long", "question-answer"]),
            library,
            ValidationConfig(),
            pairs_per_document=2,
            max_per_language=1,
            max_per_task=3,
            brainstorm=BrainstormConfig(enabled=False),
            chunk_size=2,
        )
        pairs, report = generator.generate(load_corpus(corpus_file))
    by_language = report.to_dict()["accepted_by_language"]
    by_task = report.to_dict()["accepted_by_task"]
    assert max(by_language.values()) == 1 and max(by_task.values()) <= 3
    assert len(pairs) == sum(by_task.values()) == 6  # 7 languages, but 2 tasks x 3
    # Requests stop once a bucket is full: 18 jobs, far fewer calls.
    assert len(server.answered) <= 8 and report.jobs == 18
