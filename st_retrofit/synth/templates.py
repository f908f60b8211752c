"""The prompt template library: YAML files of Jinja2 prompts, each with a task type and a JSON output schema.

A template says how one corpus passage becomes one training pair:

- ``kind: llm`` renders ``system`` and ``prompt`` with Jinja2 for an LLM backend, which must answer with JSON that
  ``output_schema`` accepts;
- ``kind: heuristic`` names a ``method`` of :mod:`st_retrofit.synth.backends.heuristic` (no LLM);
- ``kind: brainstorm`` asks an LLM for a list of task descriptions; an ``llm`` template that names it under
  ``brainstorm`` gets one of them as ``{{ task }}`` (the two-step recipe of Wang et al., 2024).

``pair`` maps the dataset columns ``query`` and ``document`` onto ``output.<key>`` (a field of the answer),
``passage`` or ``title``; ``languages`` says which of them must be in the ``source`` (passage) or ``target``
language, checked by language ID. The package ships one file per task type in ``synth/templates/``; a folder of
the user's own files adds templates and overrides shipped ones of the same name. Prompts can use ``passage``,
``title``, ``language``/``language_name``, ``target_language``/``target_language_name``, ``task``,
``task_type`` and any ``variables`` (one value drawn per request, for diversity of length, style, difficulty).

``examples`` are worked answers for few-shot prompting (``synth.few_shot``): each is a ``passage`` and its
``language`` (with optional ``title``, ``target_language`` and the ``variables`` values its answer was written for) and the
``output`` the model should have given, checked against ``output_schema`` when the file is read. They are rendered
with the template's own prompt as earlier chat turns, the request's language first: small local models follow the
answer format and the query style far more often with them (Promptagator prompts with 8 examples per task).
"""

from __future__ import annotations

import difflib
import logging
import random
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from jinja2 import UndefinedError
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from st_retrofit.config import ConfigError, ConfigModel, StRetrofitError, load_yaml, require, validate_section
from st_retrofit.synth.template_kinds import JINJA, TEMPLATE_KINDS, TemplateKind, TemplateKindName
from st_retrofit.text import language_name, normalize_language

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "templates"
PAIR_COLUMNS = ("query", "document")
CONTEXT_FIELDS = ("passage", "title")
Column = Literal["query", "document"]


class TemplateLibraryError(StRetrofitError, ValueError):
    """A template file problem, reported as ``<file> [<template>].<key>: <what is wrong>``."""


class TemplateExample(ConfigModel):
    """A worked answer for few-shot prompting (an entry of a template's ``examples``).

    Args:
        passage: the passage the answer was written for.
        language: its language.
        title: its title, where the prompt shows one.
        target_language: the language the answer was asked in (cross-lingual templates).
        variables: the template's ``variables`` values the answer was written for.
        output: the answer the model should have given (checked against ``output_schema``).
    """

    passage: str = Field(description="The example's passage.")
    language: str = Field(description="Its language code.")
    title: str | None = Field(None, description="Its title.")
    target_language: str | None = Field(None, description="The language the answer is in, when another.")
    variables: dict[str, str] = Field(default_factory=dict, description="Values of the template's variables.")
    output: dict[str, Any] = Field(description="The answer, as output_schema describes it.")

    @field_validator("language", "target_language")
    @classmethod
    def _normalized(cls, code: str | None) -> str | None:
        # Codes are compared as the corpus's are: normalized (``de-DE`` is ``de``).
        return normalize_language(code) if code else code


class SynthTemplate(ConfigModel):
    """One generation template, as a template file writes it (``st-retrofit schema --templates`` prints the JSON
    Schema of a file; see the module docstring for the format). What a template must hold beyond these shapes
    depends on its ``kind`` (:data:`~st_retrofit.synth.template_kinds.TEMPLATE_KINDS`), which checks it.

    Args:
        name: unique name; recorded in each row's ``template`` column.
        kind: a registered template kind: ``llm``, ``completion``, ``heuristic`` or ``brainstorm``.
        task_type: the kind of pair (``short-long``, ``question-answer``...); becomes the row's ``task``.
        description: one line for ``st-retrofit templates``.
        system: Jinja2 system message (``llm``, ``brainstorm``).
        prompt: Jinja2 user message (``llm``, ``brainstorm``), or the text to continue (``completion``).
        output_schema: JSON schema the parsed answer must satisfy.
        pair: ``{"query": expr, "document": expr}``; expr is ``output.<key>``, ``passage`` or ``title``.
        languages: ``{column: "source" | "target"}``: the language a column must be in.
        lengths: ``{column: [min_chars, max_chars]}``.
        requires: corpus fields a passage needs (``title``).
        cross_lingual: draw a target language other than the passage's.
        variables: ``{name: [values]}``; one value is drawn per request.
        brainstorm: the ``brainstorm`` template whose task descriptions fill ``{{ task }}``.
        method: the heuristic method (``heuristic``).
        params: keyword arguments of the heuristic method.
        examples: worked answers for few-shot prompts (``llm``, ``completion``; see the module docstring).
        answer_key: the output key a ``completion`` template's continuation fills.
        stop: where a ``completion`` ends (the first is also written after each example's answer).
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=True)

    name: str = Field(min_length=1, description="Unique name, recorded in each row.")
    kind: TemplateKindName = Field(description="Template kind.")
    task_type: str = Field(min_length=1, description="The kind of pair (short-long, question-answer...).")
    description: str = Field("", description="One line for st-retrofit templates.")
    system: str | None = Field(None, description="Jinja2 system message.")
    prompt: str | None = Field(None, description="Jinja2 user message, or the text to continue.")
    output_schema: dict[str, Any] = Field(default_factory=dict, description="JSON schema of the answer.")
    pair: dict[Column, str] = Field(default_factory=dict, description="query/document: output.<key>, passage, title.")
    languages: dict[Column, Literal["source", "target"]] = Field(
        default_factory=dict, description="The language each column must be in."
    )
    lengths: dict[Column, list[Annotated[int, Field(ge=0)]]] = Field(
        default_factory=dict, description="[min_chars, max_chars] per column."
    )
    requires: list[str] = Field(default_factory=list, description="Corpus fields a passage needs.")
    cross_lingual: bool = Field(False, description="Draw a target language other than the passage's.")
    variables: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(
        default_factory=dict, description="Values drawn per request."
    )
    brainstorm: str | None = Field(None, description="The brainstorm template that fills {{ task }}.")
    method: str | None = Field(None, description="Heuristic method.")
    params: dict[str, Any] = Field(default_factory=dict, description="Heuristic method arguments.")
    examples: list[TemplateExample] = Field(default_factory=list, description="Few-shot worked answers.")
    answer_key: str | None = Field(None, description="completion: the output key the continuation fills.")
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, description="completion: stops.")

    _source: str = PrivateAttr("")

    @model_validator(mode="after")
    def _check(self) -> SynthTemplate:
        kind = self.kind_entry
        require(not self.examples or kind.takes_examples, "examples",
                f"a {self.kind} template takes no few-shot examples")  # fmt: skip
        kind.check(self)
        if kind.writes_pairs:
            require(sorted(self.pair) == sorted(PAIR_COLUMNS), "pair",
                    f"expected the keys {list(PAIR_COLUMNS)}, got {sorted(self.pair)}")  # fmt: skip
            for column, expression in self.pair.items():
                require(expression.startswith("output.") or expression in CONTEXT_FIELDS, f"pair.{column}",
                        f"expected output.<key>, passage or title, got {expression!r}")  # fmt: skip
        for column, bounds in self.lengths.items():
            require(len(bounds) == 2 and bounds[0] <= bounds[1], f"lengths.{column}",
                    "expected [min_chars, max_chars]")  # fmt: skip
        return self

    @property
    def kind_entry(self) -> TemplateKind:
        return TEMPLATE_KINDS[self.kind]

    @property
    def source(self) -> str:
        """The file the template came from."""
        return self._source

    def text(self, key: str, context: dict[str, Any]) -> str:
        """The template's ``system`` or ``prompt`` rendered with ``context``; a variable it uses and the context
        lacks is an error naming the template and the key."""
        try:
            return JINJA.from_string(getattr(self, key)).render(**context).strip()
        except UndefinedError as exc:
            raise TemplateLibraryError(f"{self.source} [{self.name}].{key}: {exc.message}") from None

    def render(self, context: dict[str, Any], shots: int = 0, seed: int = 0) -> list[dict[str, str]]:
        """The chat messages for ``context`` (its kind's: after ``shots`` of the template's examples as earlier
        turns, those in the request's language first, the rest drawn with ``seed``)."""
        return self.kind_entry.messages(self, context, shots, seed)

    def example_context(self, context: dict[str, Any], example: TemplateExample) -> dict[str, Any]:
        """``context`` as the example's passage, title, languages and variables would make it."""
        shown = context | {"passage": example.passage, "title": example.title} | example.variables
        for key in ("language", "target_language"):
            code = getattr(example, key)
            if code:
                shown |= {key: code, f"{key}_name": language_name(code)}
        return shown

    def pick_examples(self, language: str | None, shots: int, seed: int) -> list[TemplateExample]:
        """``shots`` examples: those written in ``language`` first, each group in a seeded order."""
        if shots <= 0 or not self.examples:
            return []
        rng = random.Random(seed)
        same = [e for e in self.examples if e.language == language]
        other = [e for e in self.examples if e.language != language]
        rng.shuffle(same)
        rng.shuffle(other)
        return (same + other)[:shots]

    def language_of(self, column: str, context: dict[str, Any]) -> str:
        """The language the template writes ``column`` in: the request's target language where ``languages``
        says so, else the passage's."""
        return context["target_language"] if self.languages.get(column) == "target" else context["language"]

    def applies_to(self, row: dict[str, Any]) -> bool:
        """Whether a passage has every field the template needs."""
        return all(row.get(name) for name in self.requires)


def _read_file(path: Path) -> list[SynthTemplate]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except ConfigError as exc:
        raise TemplateLibraryError(exc.message) from None
    items = data.get("templates") if isinstance(data, dict) and "templates" in data else [data]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise TemplateLibraryError(f"{path}: expected a template mapping or `templates:` with a list of them")
    templates = []
    for item in items:
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise TemplateLibraryError(f"{path}: every template needs a `name`")
        try:
            template = validate_section(SynthTemplate, item)
        except ConfigError as exc:
            raise TemplateLibraryError(f"{path} [{name}].{exc.key}: {exc.message}") from None
        template._source = str(path)
        templates.append(template)
    return templates


def template_file_schema() -> dict[str, Any]:
    """The JSON Schema of a template file (``templates:`` and a list of templates), for editors."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "st-retrofit synthesis templates",
        "type": "object",
        "properties": {"templates": {"type": "array", "items": {"$ref": "#/$defs/SynthTemplate"}}},
        "required": ["templates"],
        "additionalProperties": False,
    }
    model = SynthTemplate.model_json_schema(ref_template="#/$defs/{model}")
    defs = model.pop("$defs", {})
    return schema | {"$defs": defs | {"SynthTemplate": model}}


class TemplateLibrary:
    """Templates by name: the shipped ones plus those in ``dirs`` (which override shipped ones of the same name).

    Example::

        from st_retrofit.synth import TemplateLibrary

        library = TemplateLibrary(dirs=["my_templates/"])
        library.select(["short-long", "title-body-heuristic"])  # names or task types
        library["question-answer"].render({"passage": "...", "language_name": "German", ...})
    """

    def __init__(self, dirs: list[str | Path] | None = None, include_builtin: bool = True) -> None:
        self.templates: dict[str, SynthTemplate] = {}
        folders = ([BUILTIN_DIR] if include_builtin else []) + [Path(d) for d in dirs or []]
        for folder in folders:
            if not folder.is_dir():
                raise TemplateLibraryError(f"{folder}: template folder does not exist")
            for path in sorted(folder.glob("*.y*ml")):
                for template in _read_file(path):
                    if template.name in self.templates and folder != BUILTIN_DIR:
                        logger.info("Template %s from %s replaces the one from %s", template.name, path,
                                    self.templates[template.name].source)  # fmt: skip
                    self.templates[template.name] = template
        for template in self.templates.values():
            if template.brainstorm is not None:
                target = self.templates.get(template.brainstorm)
                if target is None or target.kind_entry.writes_pairs:
                    raise TemplateLibraryError(
                        f"{template.source} [{template.name}].brainstorm: no brainstorm template "
                        f"{template.brainstorm!r}"
                    )

    def __getitem__(self, name: str) -> SynthTemplate:
        if name not in self.templates:
            close = difflib.get_close_matches(name, list(self.templates), n=3)
            raise KeyError(f"no template {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        return self.templates[name]

    def __iter__(self):
        return iter(self.templates.values())

    def __len__(self) -> int:
        return len(self.templates)

    @property
    def task_types(self) -> list[str]:
        return sorted({t.task_type for t in self if t.kind_entry.writes_pairs})

    def select(
        self, selectors: list[str], kinds: Collection[str] | None = None, kind: str | None = None
    ) -> list[SynthTemplate]:
        """Templates matching any selector: a template name (exactly that one), or a task type or ``all`` (those
        of ``kinds``, when given: the kinds a backend runs). A selector that is both a name and a task type picks
        the task type's templates of ``kinds`` when the named one is of another kind. ``kind``: the one-kind
        form of earlier releases (deprecated).

        Raises:
            KeyError: a selector matches nothing, with the close names.
        """
        if kind is not None:
            warnings.warn("select(kind=...) is now select(kinds=[...])", FutureWarning, stacklevel=2)
            kinds = (kind,)

        def wanted(template: SynthTemplate) -> bool:
            return kinds is None or template.kind in kinds

        chosen: dict[str, SynthTemplate] = {}
        writers = [t for t in self if t.kind_entry.writes_pairs]
        for selector in selectors:
            named = self.templates.get(selector)
            # A name is exact, unless it is also a task type with templates of the wanted kinds (``short-long`` is
            # the LLM template's name and the heuristic backend's task type).
            if named is not None and named in writers and (wanted(named) or selector not in self.task_types):
                matches = [named]
            else:
                matches = [t for t in writers if selector in ("all", t.task_type) and wanted(t)]
            if not matches:
                names = sorted({t.name for t in writers} | set(self.task_types))
                close = difflib.get_close_matches(selector, names, n=3)
                hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(names)}"
                of_kind = f" with {' or '.join(sorted(kinds))} templates" if kinds else ""
                raise KeyError(f"no template or task type{of_kind} named {selector!r}; {hint}")
            chosen.update((t.name, t) for t in matches)
        return list(chosen.values())
