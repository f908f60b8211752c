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
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from st_retrofit.config import StRetrofitError
from st_retrofit.synth.languages import language_name, normalize_language

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "templates"
KINDS = ("llm", "heuristic", "brainstorm")
PAIR_COLUMNS = ("query", "document")
CONTEXT_FIELDS = ("passage", "title")
_KEYS = {
    "name", "kind", "task_type", "description", "system", "prompt", "output_schema", "pair", "languages",
    "lengths", "requires", "cross_lingual", "variables", "brainstorm", "method", "params", "examples",
}  # fmt: skip
_EXAMPLE_KEYS = ("passage", "title", "language", "target_language", "variables", "output")

_ENV = SandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


class TemplateLibraryError(StRetrofitError, ValueError):
    """A template file problem, reported as ``<file> [<template>].<key>: <what is wrong>``."""


@dataclass(frozen=True)
class SynthTemplate:
    """One generation template (see the module docstring for the file format).

    Args:
        name: unique name; recorded in each row's ``template`` column.
        kind: ``llm``, ``heuristic`` or ``brainstorm``.
        task_type: the kind of pair (``short-long``, ``question-answer``...); becomes the row's ``task``.
        description: one line for ``st-retrofit templates``.
        system: Jinja2 system message (``llm``, ``brainstorm``).
        prompt: Jinja2 user message (``llm``, ``brainstorm``).
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
        examples: worked answers for few-shot prompts (``llm``; see the module docstring).
        source: the file it came from.
    """

    name: str
    kind: str
    task_type: str
    description: str = ""
    system: str | None = None
    prompt: str | None = None
    output_schema: dict[str, Any] = field(default_factory=dict)
    pair: dict[str, str] = field(default_factory=dict)
    languages: dict[str, str] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    cross_lingual: bool = False
    variables: dict[str, list[str]] = field(default_factory=dict)
    brainstorm: str | None = None
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    examples: tuple[dict[str, Any], ...] = ()
    source: str = ""

    def _text(self, key: str, text: str, context: dict[str, Any]) -> str:
        try:
            return _ENV.from_string(text).render(**context).strip()
        except UndefinedError as exc:
            raise TemplateLibraryError(f"{self.source} [{self.name}].{key}: {exc.message}") from None

    def render(self, context: dict[str, Any], shots: int = 0, seed: int = 0) -> list[dict[str, str]]:
        """The chat messages for ``context``, after ``shots`` of the template's examples as earlier turns (those in
        the request's language first, the rest drawn with ``seed``); a variable the prompt uses and the context
        lacks is an error."""
        messages = [{"role": "system", "content": self._text("system", self.system, context)}] if self.system else []
        for example in self.pick_examples(context.get("language"), shots, seed):
            shown = context | {"passage": example["passage"], "title": example.get("title")}
            shown |= example.get("variables", {})
            for key in ("language", "target_language"):
                if key in example:
                    shown |= {key: example[key], f"{key}_name": language_name(example[key])}
            messages.append({"role": "user", "content": self._text("prompt", self.prompt, shown)})
            messages.append({"role": "assistant", "content": json.dumps(example["output"], ensure_ascii=False)})
        if self.prompt:
            messages.append({"role": "user", "content": self._text("prompt", self.prompt, context)})
        return messages

    def pick_examples(self, language: str | None, shots: int, seed: int) -> list[dict[str, Any]]:
        """``shots`` examples: those written in ``language`` first, each group in a seeded order."""
        if shots <= 0 or not self.examples:
            return []
        rng = random.Random(seed)
        same = [e for e in self.examples if e.get("language") == language]
        other = [e for e in self.examples if e.get("language") != language]
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


def _fail(source: str, name: str, key: str, message: str) -> None:
    raise TemplateLibraryError(f"{source} [{name}].{key}: {message}")


def _check_template(data: dict[str, Any], source: str) -> SynthTemplate:
    from st_retrofit.extras import require_module

    jsonschema = require_module("jsonschema", "synthesis templates")
    Draft202012Validator, SchemaError = jsonschema.Draft202012Validator, jsonschema.SchemaError

    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise TemplateLibraryError(f"{source}: every template needs a `name`")
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(key, sorted(_KEYS), n=1)
            _fail(source, name, key, "unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
    kind = data.get("kind")
    if kind not in KINDS:
        _fail(source, name, "kind", f"expected one of {KINDS}, got {kind!r}")
    if not isinstance(data.get("task_type"), str):
        _fail(source, name, "task_type", "expected a string such as short-long or question-answer")
    if kind in ("llm", "brainstorm"):
        if not isinstance(data.get("prompt"), str):
            _fail(source, name, "prompt", "an llm or brainstorm template needs a Jinja2 prompt")
        for key in ("system", "prompt"):
            if data.get(key) is not None:
                try:
                    _ENV.parse(data[key])
                except TemplateError as exc:
                    _fail(source, name, key, f"Jinja2 syntax error: {exc}")
        schema = data.get("output_schema")
        if not isinstance(schema, dict):
            _fail(source, name, "output_schema", "expected a JSON schema mapping")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            _fail(source, name, "output_schema", f"not a valid JSON schema: {exc.message}")
    if kind == "heuristic" and not isinstance(data.get("method"), str):
        _fail(source, name, "method", "a heuristic template names its method")
    if kind != "brainstorm":
        pair = data.get("pair") or {}
        if sorted(pair) != sorted(PAIR_COLUMNS):
            _fail(source, name, "pair", f"expected the keys {list(PAIR_COLUMNS)}, got {sorted(pair)}")
        outputs = (data.get("output_schema") or {}).get("properties", {})
        required = (data.get("output_schema") or {}).get("required", [])
        for column, expr in pair.items():
            if expr.startswith("output."):
                key = expr[len("output.") :]
                if kind == "llm" and (key not in outputs or key not in required):
                    _fail(source, name, f"pair.{column}", f"{expr} is not a required property of output_schema")
            elif expr not in CONTEXT_FIELDS:
                _fail(source, name, f"pair.{column}", f"expected output.<key>, passage or title, got {expr!r}")
    for column, side in (data.get("languages") or {}).items():
        if column not in PAIR_COLUMNS or side not in ("source", "target"):
            _fail(source, name, f"languages.{column}", "expected query/document mapped to source or target")
    for column, bounds in (data.get("lengths") or {}).items():
        if column not in PAIR_COLUMNS or not (
            isinstance(bounds, list) and len(bounds) == 2 and bounds[0] <= bounds[1]
        ):
            _fail(source, name, f"lengths.{column}", "expected query/document mapped to [min_chars, max_chars]")
    for key, values in (data.get("variables") or {}).items():
        if not (isinstance(values, list) and values):
            _fail(source, name, f"variables.{key}", "expected a non-empty list of values")
    examples = data.get("examples") or []
    if examples and kind != "llm":
        _fail(source, name, "examples", "only llm templates take few-shot examples")
    if not isinstance(examples, list):
        _fail(source, name, "examples", "expected a list of {passage, language, output} mappings")
    validator = Draft202012Validator(data.get("output_schema") or {})
    for i, example in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(example, dict) or not all(isinstance(example.get(k), str) for k in ("passage", "language")):
            _fail(source, name, where, "expected a mapping with a passage, its language and an output")
        for key in example:
            if key not in _EXAMPLE_KEYS:
                _fail(source, name, f"{where}.{key}", f"unknown key; an example takes {', '.join(_EXAMPLE_KEYS)}")
        error = next(iter(validator.iter_errors(example.get("output"))), None)
        if error is not None:
            _fail(source, name, f"{where}.output", f"does not satisfy output_schema: {error.message}")
        for key in example.get("variables") or {}:
            if key not in (data.get("variables") or {}):
                _fail(source, name, f"{where}.variables.{key}", "not one of the template's variables")
    return SynthTemplate(
        name=name,
        kind=kind,
        task_type=data["task_type"],
        description=data.get("description", ""),
        system=data.get("system"),
        prompt=data.get("prompt"),
        output_schema=data.get("output_schema") or {},
        pair=dict(data.get("pair") or {}),
        languages=dict(data.get("languages") or {}),
        lengths=dict(data.get("lengths") or {}),
        requires=tuple(data.get("requires") or ()),
        cross_lingual=bool(data.get("cross_lingual", False)),
        variables=dict(data.get("variables") or {}),
        brainstorm=data.get("brainstorm"),
        method=data.get("method"),
        params=dict(data.get("params") or {}),
        # Codes as the corpus's are compared: normalized (``de-DE`` is ``de``).
        examples=tuple(
            e | {k: normalize_language(e[k]) for k in ("language", "target_language") if k in e} for e in examples
        ),  # fmt: skip
        source=source,
    )


def _read_file(path: Path) -> list[SynthTemplate]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TemplateLibraryError(f"{path}: not valid YAML: {exc}") from None
    items = data.get("templates") if isinstance(data, dict) and "templates" in data else [data]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise TemplateLibraryError(f"{path}: expected a template mapping or `templates:` with a list of them")
    return [_check_template(item, str(path)) for item in items]


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
                if target is None or target.kind != "brainstorm":
                    _fail(
                        template.source, template.name, "brainstorm", f"no brainstorm template {template.brainstorm!r}"
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
        return sorted({t.task_type for t in self if t.kind != "brainstorm"})

    def select(self, selectors: list[str], kind: str | None = None) -> list[SynthTemplate]:
        """Templates matching any selector: a template name (exactly that one), or a task type or ``all`` (those
        of ``kind``, when given: ``llm`` or ``heuristic``). A selector that is both a name and a task type picks
        the task type's templates of ``kind`` when the named one is of another kind.

        Raises:
            KeyError: a selector matches nothing, with the close names.
        """
        chosen: dict[str, SynthTemplate] = {}
        for selector in selectors:
            named = self.templates.get(selector)
            # A name is exact, unless it is also a task type with templates of the wanted kind (``short-long`` is
            # the LLM template's name and the heuristic backend's task type).
            if (
                named is not None
                and named.kind != "brainstorm"
                and (kind in (None, named.kind) or selector not in self.task_types)
            ):
                matches = [named]
            else:
                matches = [
                    t for t in self
                    if t.kind != "brainstorm" and selector in ("all", t.task_type) and kind in (None, t.kind)
                ]  # fmt: skip
            if not matches:
                names = sorted({t.name for t in self if t.kind != "brainstorm"} | set(self.task_types))
                close = difflib.get_close_matches(selector, names, n=3)
                hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(names)}"
                of_kind = f" with {kind} templates" if kind else ""
                raise KeyError(f"no template or task type{of_kind} named {selector!r}; {hint}")
            chosen.update((t.name, t) for t in matches)
        return list(chosen.values())
