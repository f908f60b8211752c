"""Few-shot examples from the template library, and decoding constrained to a template's JSON schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from st_retrofit.synth import ResponseCache, SyntheticDataGenerator, TemplateLibrary, TransformersBackend, load_corpus
from st_retrofit.synth.backends import GenerationRequest
from st_retrofit.synth.config import BrainstormConfig, ValidationConfig
from st_retrofit.synth.templates import TemplateLibraryError


def _context(language: str, name: str) -> dict:
    return {"passage": "Der Rhein fließt durch Basel.", "title": None, "language": language, "language_name": name,
            "target_language": language, "target_language_name": name, "task": "T", "task_type": "short-long",
            "query_type": "common", "query_length": "less than 5 words", "clarity": "clear",
            "difficulty": "college"}  # fmt: skip


def test_few_shot_turns_come_before_the_request_with_the_requests_language_first():
    template = TemplateLibrary()["short-long"]
    assert [m["role"] for m in template.render(_context("de", "German"))] == ["system", "user"]
    messages = template.render(_context("de", "German"), shots=3, seed=1)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant",
                                             "user"]  # fmt: skip
    german = next(e for e in template.examples if e.language == "de")
    assert json.loads(messages[2]["content"]) == german.output  # the only German example comes first
    assert german.passage.split()[0] in messages[1]["content"] and "(German)" in messages[1]["content"]
    # Each example is shown with the instruction its answer was written for, and the request keeps its own.
    assert german.variables["query_length"] in messages[1]["content"]
    assert "Der Rhein" in messages[-1]["content"] and "less than 5 words" in messages[-1]["content"]
    # The other two are drawn by the seed: another seed, another pick or order.
    picks = {tuple(m["content"] for m in template.render(_context("de", "German"), 3, seed)[3:7]) for seed in range(8)}
    assert len(picks) > 1


def test_a_bad_example_is_refused_naming_the_template_and_the_entry(tmp_path):
    def write(example: dict) -> None:
        (tmp_path / "mine.yaml").write_text(json.dumps({
            "name": "mine", "kind": "llm", "task_type": "short-long", "prompt": "{{ passage }}",
            "output_schema": {"type": "object", "required": ["query"],
                              "properties": {"query": {"type": "string", "minLength": 2}}},
            "pair": {"query": "output.query", "document": "passage"}, "variables": {"style": ["a", "b"]},
            "examples": [{"passage": "p", "language": "en", "output": {"query": "fine"}}, example],
        }))  # fmt: skip

    for example, message in [
        ({"passage": "p", "language": "en", "output": {"query": ""}}, "examples[1].output: does not satisfy"),
        ({"passage": "p", "language": "en", "output": {}}, "examples[1].output: does not satisfy output_schema"),
        (
            {"passage": "p", "language": "en", "output": {"query": "ok"}, "variables": {"tone": "x"}},
            "examples[1].variables.tone",
        ),
        ({"passage": "p", "language": "en", "answer": {"query": "ok"}}, "examples[1].answer: unknown key"),
        ({"passage": "p", "output": {"query": "ok"}}, "examples[1].language: required"),
    ]:
        write(example)
        with pytest.raises(
            TemplateLibraryError, match=rf"mine\.yaml \[mine\]\.{message.replace('[', '.').replace(']', '.')}"
        ):
            TemplateLibrary(dirs=[tmp_path])


def test_every_shipped_example_satisfies_its_templates_schema_and_variables():
    # The library checks them when it reads the files; this says which templates carry them.
    library = TemplateLibrary()
    with_examples = {t.name: len(t.examples) for t in library if t.examples}
    assert with_examples["short-long"] >= 5 and with_examples["cross-lingual"] >= 3
    for name in with_examples:
        for example in library[name].examples:
            jsonschema.validate(example.output, library[name].output_schema)


# -- constrained decoding: a randomly initialized chat model, which writes no JSON of its own ---------------


@pytest.fixture(scope="module")
def random_chat_model(tmp_path_factory, save_random_llama):
    """A random 2-layer Llama with a chat template (no download)."""
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return save_random_llama(tmp_path_factory.mktemp("random-chat"), chat_template=template)


# maxLength counts characters and the tokenizer is byte-level: a random model that picks Hangul or Cyrillic spends up
# to 4 tokens a character, so the budget must hold the longest string the schema allows, or an answer is cut off
# before the grammar can close it (the flake: 40 tokens for up to 24 such characters).
BUDGET_12, BUDGET_24 = 12 * 4 + 32, 24 * 4 + 32
SCHEMA = {
    "type": "object",
    "required": ["query", "language"],
    "properties": {"query": {"type": "string", "minLength": 2, "maxLength": 12}, "language": {"enum": ["de", "en"]}},
}


def _requests(n: int) -> list[GenerationRequest]:
    messages = [{"role": "user", "content": "Write a query as JSON."}]
    return [GenerationRequest(f"k{i}", messages, SCHEMA, seed=i) for i in range(n)]


def _parsed(text: str) -> dict | None:
    try:
        answer = json.loads(text)
        jsonschema.validate(answer, SCHEMA)
        return answer
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return None


def test_constrained_decoding_makes_every_answer_of_a_random_model_valid_json_of_the_schema(random_chat_model):
    def answers(response_format: str) -> list[str]:
        backend = TransformersBackend(random_chat_model, device="cpu", batch_size=3, temperature=1.0,
                                      max_new_tokens=BUDGET_12, prefill_json=False, response_format=response_format)  # fmt: skip
        return [result.text for result in backend.generate(_requests(6))]

    free = answers("json_object")
    assert not any(_parsed(text) for text in free), free  # the model itself writes noise
    constrained = answers("json_schema")
    parsed = [_parsed(text) for text in constrained]
    assert all(parsed), constrained
    assert len({p["query"] for p in parsed}) > 1  # sampled, not one forced string


def test_constrained_answers_are_cached_apart_from_free_ones(random_chat_model):
    free = TransformersBackend(random_chat_model, response_format="json_object")
    constrained = TransformersBackend(random_chat_model, response_format="json_schema")
    assert free.identity() != constrained.identity() and "response_format" not in free.identity()
    assert constrained.prefill_json is False  # the grammar writes the JSON; a prefill would fight it


def test_the_generator_with_few_shot_and_a_constrained_random_model_keeps_every_answer(
    random_chat_model, corpus_file, tmp_path
):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "short.yaml").write_text(json.dumps({
        "name": "short-query", "kind": "llm", "task_type": "short-long",
        "prompt": 'Passage ({{ language_name }}): {{ passage }}\nAnswer as JSON: {"query": "..."}',
        "output_schema": {"type": "object", "required": ["query"],
                          "properties": {"query": {"type": "string", "minLength": 3, "maxLength": 24}}},
        "pair": {"query": "output.query", "document": "passage"}, "languages": {"query": "source"},
        "examples": [{"language": "en", "passage": "Tomatoes need stakes.", "output": {"query": "tomato stakes"}},
                     {"language": "de", "passage": "Der Rhein fließt.", "output": {"query": "Rhein Verlauf"}}],
    }))  # fmt: skip
    library = TemplateLibrary(dirs=[tmp_path / "templates"])
    backend = TransformersBackend(random_chat_model, device="cpu", batch_size=9, max_new_tokens=BUDGET_24,
                                  response_format="json_schema")  # fmt: skip
    generator = SyntheticDataGenerator(backend, library.select(["short-query"]), library, ValidationConfig(), seed=0,
                                       cache=ResponseCache(tmp_path / "cache"), few_shot=2,
                                       brainstorm=BrainstormConfig(enabled=False))  # fmt: skip
    pairs, report = generator.generate(load_corpus(corpus_file))
    assert report.requests["generated"] == 9
    assert not report.rejected, dict(report.rejected_examples)  # the grammar, not the model, wrote the format
    assert len(pairs) == 9 and all(3 <= len(q) <= 24 for q in pairs["query"])


def test_a_recipe_asking_for_constrained_decoding_without_llguidance_names_the_key(monkeypatch):
    from st_retrofit.config import ConfigError
    from st_retrofit.synth.config import BackendConfig

    config = BackendConfig(type="transformers", response_format="json_schema")
    monkeypatch.setattr("st_retrofit.extras.importlib.import_module", _missing("llguidance"))
    with pytest.raises(ConfigError, match=r"^response_format: .*pip install 'st-retrofit\[synth\]'"):
        config.check_environment()


def _missing(name: str):
    import importlib

    real = importlib.import_module

    def import_module(module: str, *args):
        if module.split(".")[0] == name:
            raise ImportError(module)
        return real(module, *args)

    return import_module


def test_the_grammar_closes_every_object_but_leaves_property_names_alone():
    from st_retrofit.synth.backends.constrained import closed_objects

    schema = {"type": "object", "properties": {"type": {"type": "object"}, "items": {"items": {"type": "object"}}}}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False and closed["properties"]["type"]["additionalProperties"] is False
    assert closed["properties"]["items"]["items"]["additionalProperties"] is False
    assert set(closed["properties"]) == {"type", "items"}  # a property called "type" is a name, not a keyword
    assert closed_objects({**schema, "additionalProperties": True})["additionalProperties"] is True
