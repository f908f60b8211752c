"""The template library: shipped templates, user folders, and errors that name the file, template and key."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from st_retrofit.synth import TemplateLibrary, TemplateLibraryError

CONTEXT = {
    "passage": "Berlin ist die Hauptstadt Deutschlands.",
    "title": "Berlin",
    "language": "de",
    "language_name": "German",
    "target_language": "ja",
    "target_language_name": "Japanese",
    "task": "Given a question, retrieve passages that answer it",
    "task_type": "short-long",
    "count": 5,
}


def test_the_shipped_library_covers_every_task_type_with_a_valid_schema_and_renders():
    library = TemplateLibrary()
    assert library.task_types == [
        "bitext", "classification", "cross-lingual", "long-long", "question-answer", "short-long", "short-short",
        "similarity", "title-body",
    ]  # fmt: skip
    from st_retrofit.synth.backends.heuristic import METHODS

    assert {t.method for t in library if t.kind == "heuristic"} == set(METHODS)
    for template in library:
        if template.kind in ("heuristic", "completion"):  # no chat: tests/synth/test_completion.py renders these
            continue
        Draft202012Validator.check_schema(template.output_schema)
        context = CONTEXT | {name: values[0] for name, values in template.variables.items()}
        messages = template.render(context)
        assert [m["role"] for m in messages] == ["system", "user"]
        assert "{{" not in messages[1]["content"] and "JSON" in messages[1]["content"]
    assert "Japanese" in library["cross-lingual"].render(CONTEXT | {"query_length": "short"})[1]["content"]


def test_a_variable_the_context_lacks_is_an_error_naming_template_and_variable():
    template = TemplateLibrary()["short-long"]
    with pytest.raises(TemplateLibraryError, match=r"\[short-long\].prompt: 'query_type' is undefined"):
        template.render(CONTEXT)


def test_selection_by_name_task_type_and_kind():
    library = TemplateLibrary()
    assert [t.name for t in library.select(["short-long"], kinds=["llm"])] == ["short-long"]
    assert [t.name for t in library.select(["short-long"], kinds=["heuristic"])] == ["inverse-cloze", "lead-sentence"]
    assert [t.name for t in library.select(["inverse-cloze"], kinds=["llm"])] == ["inverse-cloze"]  # a name is exact
    assert {t.kind for t in library.select(["all"], kinds=["heuristic"])} == {"heuristic"}
    with pytest.raises(KeyError, match="did you mean short-long"):
        library.select(["short-lnog"])


def test_a_user_folder_adds_templates_and_replaces_shipped_ones(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        """
templates:
  - name: short-long
    kind: llm
    task_type: short-long
    prompt: "Query for: {{ passage }}. Answer as JSON: {\\"query\\": \\"...\\"}"
    output_schema: {type: object, required: [query], properties: {query: {type: string}}}
    pair: {query: output.query, document: passage}
  - name: legal-question
    kind: llm
    task_type: legal
    prompt: "A lawyer's question on: {{ passage }}"
    output_schema: {type: object, required: [q], properties: {q: {type: string}}}
    pair: {query: output.q, document: passage}
"""
    )
    library = TemplateLibrary([tmp_path])
    assert library["short-long"].source.endswith("mine.yaml")
    assert library["short-long"].render({"passage": "X"})[0]["content"].startswith("Query for: X")
    assert "legal" in library.task_types and len(library) == len(TemplateLibrary()) + 1


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("name: a\nkind: llm\ntask_type: t\nprmpt: x\n", r"\[a\]\.prmpt: unknown key \(did you mean prompt\?\)"),
        (
            "name: a\nkind: chat\ntask_type: t\n",
            r"\[a\]\.kind: unknown template kind 'chat'; registered: llm, completion, heuristic, brainstorm",
        ),
        ("name: a\nkind: llm\ntask_type: t\nprompt: '{{ x'\noutput_schema: {}\n", r"\[a\]\.prompt: Jinja2 syntax"),
        (
            "name: a\nkind: llm\ntask_type: t\nprompt: x\noutput_schema: {type: 5}\n",
            r"\[a\]\.output_schema: not a valid",
        ),
        (
            "name: a\nkind: llm\ntask_type: t\nprompt: x\noutput_schema: {type: object, properties: {q: {}}}\n"
            "pair: {query: output.q, document: passage}\n",
            r"\[a\]\.pair\.query: output\.q is not a required property",
        ),
        (
            "name: a\nkind: llm\ntask_type: t\nprompt: x\noutput_schema: {}\nbrainstorm: nope\n"
            "pair: {query: title, document: passage}\n",
            r"\[a\]\.brainstorm: no brainstorm template 'nope'",
        ),
        ("name: a\nkind: heuristic\ntask_type: t\npair: {query: title}\n", r"\[a\]\.method: a heuristic template"),
    ],
)
def test_a_bad_template_file_is_refused_naming_file_template_and_key(tmp_path, body, error):
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(TemplateLibraryError, match=error) as excinfo:
        TemplateLibrary([tmp_path])
    assert "bad.yaml" in str(excinfo.value)


def test_the_one_kind_form_of_select_still_works_with_a_warning():
    library = TemplateLibrary()
    with pytest.warns(FutureWarning, match=r"select\(kinds=\[...\]\)"):
        chosen = library.select(["short-long"], kind="heuristic")
    assert [t.name for t in chosen] == ["inverse-cloze", "lead-sentence"]
