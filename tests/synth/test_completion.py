"""Completion templates, for base LLMs that follow no chat: the prompt shows worked answers as plain text, the
model's continuation up to the stop is the answer; the template kinds are registered classes, and template files
are validated by a config model whose JSON Schema is committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from st_retrofit.config import ConfigError
from st_retrofit.synth import TemplateLibrary, TemplateLibraryError
from st_retrofit.synth.backends import GenerationRequest, TransformersBackend
from st_retrofit.synth.templates import BUILTIN_DIR, template_file_schema

CONTEXT = {"passage": "Der Befehl ls listet Dateien auf.", "language": "de", "language_name": "German"}


@pytest.fixture(scope="module")
def random_base_model(tmp_path_factory, save_random_llama):
    """A random 2-layer Llama with no chat template: a base model."""
    return save_random_llama(tmp_path_factory.mktemp("random-base"))


def test_the_prompt_shows_worked_answers_in_the_requests_language_first_then_the_passage():
    template = TemplateLibrary()["short-long-completion"]
    text = template.kind_entry.prompt_text(template, CONTEXT, shots=3, seed=0)
    blocks = text.split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == "Passage: Der Befehl ls listet Dateien auf.\nSearch query (German):"
    german = next(e for e in template.examples if e.language == "de")
    assert blocks[0] == f"Passage: {german.passage}\nSearch query (German): {german.output['query']}"
    assert all(block.count("\n") == 1 for block in blocks)  # each example: its passage line and its answer line
    assert template.render(CONTEXT) == []  # no chat: nothing for a chat endpoint


def test_the_continuation_up_to_the_stop_is_the_answer():
    template = TemplateLibrary()["short-long-completion"]
    parse = template.kind_entry.parse
    assert parse(template, " ls Dateien anzeigen\nPassage: more") == ({"query": "ls Dateien anzeigen"}, None)
    assert parse(template, "\nPassage: nothing on the line") == (None, "empty")
    assert parse(template, " x") == (None, "schema")  # minLength 2


def test_a_base_model_continues_completion_templates_and_refuses_chat_ones(random_base_model):
    template = TemplateLibrary()["short-long-completion"]
    prompt = template.kind_entry.prompt_text(template, CONTEXT, shots=2, seed=0)
    requests = [
        GenerationRequest(f"k{i}", [], None, i, template, CONTEXT, prompt=prompt, stop=("\n",)) for i in range(4)
    ]
    backend = TransformersBackend(random_base_model, device="cpu", batch_size=2, temperature=1.0, max_new_tokens=24)
    results = list(backend.generate(requests))
    assert [r.request.key for r in results] == ["k0", "k1", "k2", "k3"]
    assert all(r.text is not None and "\n" not in r.text for r in results)  # cut at the stop
    assert all(r.usage["prompt_tokens"] > len(prompt) // 2 for r in results)  # the prompt went in as text, whole
    chat = GenerationRequest("c", [{"role": "user", "content": "hi"}], None, 0)
    with pytest.raises(
        Exception, match=r"has no chat template; .* \(synth.backend.prompt_format: completion\) for a base model"
    ):
        list(backend.generate([chat]))


def test_a_completion_template_must_say_where_its_answer_ends_and_what_it_fills(tmp_path):
    body = {"name": "c", "kind": "completion", "task_type": "short-long", "prompt": "Passage: {{ passage }}\nQuery:",
            "pair": {"query": "output.query", "document": "passage"}}  # fmt: skip
    for missing, key in (({"stop": ["\n"]}, "answer_key"), ({"answer_key": "query"}, "stop")):
        (tmp_path / "c.yaml").write_text(json.dumps(body | missing))
        with pytest.raises(TemplateLibraryError, match=rf"c\.yaml \[c\]\.{key}: "):
            TemplateLibrary([tmp_path])
    (tmp_path / "c.yaml").write_text(json.dumps(body | {"answer_key": "query", "stop": ["\n"], "system": "You..."}))
    with pytest.raises(TemplateLibraryError, match=r"\[c\]\.system: a completion template sends one text"):
        TemplateLibrary([tmp_path])


def test_the_backend_runs_the_template_kind_its_prompt_format_says():
    from st_retrofit.synth.config import SynthConfig
    from st_retrofit.synth.stage import select_templates

    def config(fmt: str, templates: list[str]) -> SynthConfig:
        return SynthConfig(source="corpus", corpus={"path": "docs.jsonl"}, templates=templates,
                           backend={"type": "transformers", "prompt_format": fmt})  # fmt: skip

    # A task type picks the kind the backend runs: chat gets the llm template, completion the completion one.
    assert [t.name for t in select_templates(config("chat", ["short-long"]))[1]] == ["short-long"]
    assert [t.name for t in select_templates(config("completion", ["short-long"]))[1]] == ["short-long-completion"]
    with pytest.raises(ConfigError) as info:
        select_templates(config("chat", ["short-long-completion"]))
    assert info.value.key == "templates" and "prompt_format" in info.value.message
    # Heuristic templates run beside any backend.
    assert [t.name for t in select_templates(config("completion", ["lead-sentence"]))[1]] == ["lead-sentence"]


def test_every_shipped_template_file_names_the_committed_schema_and_validates_against_it():
    import jsonschema

    committed = BUILTIN_DIR / "template.schema.json"
    assert json.loads(committed.read_text()) == template_file_schema(), (
        f"regenerate: st-retrofit schema --templates > {committed}"
    )
    validator = jsonschema.Draft202012Validator(template_file_schema())
    files = sorted(Path(BUILTIN_DIR).glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=template.schema.json", path.name
        assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == [], path.name


def test_a_template_kind_registered_from_outside_joins_the_library(tmp_path):
    from st_retrofit.synth.template_kinds import TEMPLATE_KINDS, TemplateKind

    @TEMPLATE_KINDS.register
    class Echo(TemplateKind):  # a test kind: the passage's first word is the query
        name, description, needs_llm = "echo", "the passage's first word", False

        def parse(self, template, answer):
            return {"query": answer}, None

    try:
        (tmp_path / "e.yaml").write_text(json.dumps({
            "name": "echo", "kind": "echo", "task_type": "short-long", "pair": {"query": "output.query",
                                                                               "document": "passage"}}))  # fmt: skip
        template = TemplateLibrary([tmp_path])["echo"]
        assert template.kind_entry.parse(template, "ls") == ({"query": "ls"}, None)
    finally:
        TEMPLATE_KINDS._kinds.pop("echo")
