"""The kinds of synthesis template (a template file's ``kind``): each registered class says what a template of its
kind must hold, whether it writes pairs, what runs it, what it sends and how its answer is read.

- ``llm``: chat messages (Jinja2 ``system`` and ``prompt``) for an instruction-tuned LLM, answered with JSON that
  ``output_schema`` accepts; few-shot ``examples`` become earlier chat turns;
- ``completion``: one text for a base (pre-trained, not chat) LLM, continued until ``stop``: few-shot examples
  written out as ``prompt`` + answer, then ``prompt`` for the passage; the continuation is ``output.<answer_key>``;
- ``heuristic``: no LLM; a ``method`` of :mod:`st_retrofit.synth.backends.heuristic` cuts the pair from the passage;
- ``brainstorm``: chat messages that ask for task descriptions (``{{ task }}`` of the templates that name it).

A new kind subclasses :class:`TemplateKind` and is registered with ``@TEMPLATE_KINDS.register``; a synth backend
lists the kinds it runs (``SynthBackendKind.template_kinds``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from st_retrofit.config import ConfigError, require
from st_retrofit.registry import Kind, Registry

if TYPE_CHECKING:
    from st_retrofit.synth.templates import SynthTemplate

# Prompts are rendered in a sandbox (template files may come from anyone), and an unknown variable is an error.
JINJA = SandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


class TemplateKind(Kind):
    """One kind of template.

    ``writes_pairs``: its answers become training pairs (a brainstorm template's do not); ``needs_llm``: an LLM
    answers it (a heuristic's method does); ``takes_examples``: it renders few-shot ``examples``;
    ``quotes_passage``: an answer that copies a sentence of the passage is refused (an LLM asked for a query should
    not copy; a heuristic cuts from the passage on purpose)."""

    writes_pairs: ClassVar[bool] = True
    needs_llm: ClassVar[bool] = True
    takes_examples: ClassVar[bool] = False
    quotes_passage: ClassVar[bool] = False

    def check(self, template: SynthTemplate) -> None:
        """What a template of this kind must hold (keys relative to the template)."""

    def messages(
        self, template: SynthTemplate, context: dict[str, Any], shots: int, seed: int
    ) -> list[dict[str, str]]:
        """The chat messages of one request (none for kinds that send no chat)."""
        return []

    def prompt_text(self, template: SynthTemplate, context: dict[str, Any], shots: int, seed: int) -> str | None:
        """The raw text of one request, for kinds that send text instead of chat."""
        return None

    def parse(self, template: SynthTemplate, answer: str) -> tuple[dict[str, Any] | None, str | None]:
        """The answer as the template's output mapping and ``None``, or ``None`` and the rule that refused it."""
        from st_retrofit.synth.validation import parse_json_answer

        return parse_json_answer(answer, template.output_schema)


TEMPLATE_KINDS: Registry[TemplateKind] = Registry("template kind", TemplateKind)
TemplateKindName = TEMPLATE_KINDS.field()


def _check_prompts(template: SynthTemplate, keys: tuple[str, ...]) -> None:
    from jinja2 import TemplateError

    for key in keys:
        text = getattr(template, key)
        if text is not None:
            try:
                JINJA.parse(text)
            except TemplateError as exc:
                raise ConfigError(key, f"Jinja2 syntax error: {exc}") from None


def _check_schema(template: SynthTemplate) -> None:
    from st_retrofit.extras import require_module

    jsonschema = require_module("jsonschema", "synthesis templates")
    try:
        jsonschema.Draft202012Validator.check_schema(template.output_schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError("output_schema", f"not a valid JSON schema: {exc.message}") from None


def _check_outputs(template: SynthTemplate) -> None:
    """Every ``output.<key>`` the pair reads is a required property of the answer."""
    properties = template.output_schema.get("properties", {})
    required = template.output_schema.get("required", [])
    for column, expression in template.pair.items():
        if expression.startswith("output."):
            key = expression.removeprefix("output.")
            require(key in properties and key in required, f"pair.{column}",
                    f"{expression} is not a required property of output_schema")  # fmt: skip


def _check_examples(template: SynthTemplate) -> None:
    from st_retrofit.extras import require_module

    validator = require_module("jsonschema", "synthesis templates").Draft202012Validator(template.output_schema)
    for i, example in enumerate(template.examples):
        error = next(iter(validator.iter_errors(example.output)), None)
        if error is not None:
            raise ConfigError(f"examples[{i}].output", f"does not satisfy output_schema: {error.message}")
        for key in example.variables:
            require(key in template.variables, f"examples[{i}].variables.{key}", "not one of the template's variables")


@TEMPLATE_KINDS.register
class LlmTemplate(TemplateKind):
    name = "llm"
    description = "chat messages for an instruction-tuned LLM, answered with JSON that output_schema accepts"
    takes_examples = True
    quotes_passage = True

    def check(self, template):
        require(template.prompt is not None, "prompt", "an llm template needs a Jinja2 prompt")
        _check_prompts(template, ("system", "prompt"))
        _check_schema(template)
        _check_outputs(template)
        _check_examples(template)

    def messages(self, template, context, shots, seed):
        messages = [{"role": "system", "content": template.text("system", context)}] if template.system else []
        for example in template.pick_examples(context.get("language"), shots, seed):
            messages.append(
                {"role": "user", "content": template.text("prompt", template.example_context(context, example))}
            )
            messages.append({"role": "assistant", "content": json.dumps(example.output, ensure_ascii=False)})
        messages.append({"role": "user", "content": template.text("prompt", context)})
        return messages


@TEMPLATE_KINDS.register
class CompletionTemplate(TemplateKind):
    """For base models, which continue text and follow no chat: the prompt shows worked examples in the very form
    the answer should take ("Passage: ... Query: ..."), and the model's continuation up to ``stop`` is the answer."""

    name = "completion"
    description = "few-shot text for a base (not chat) LLM, continued until stop; the continuation is the answer"
    takes_examples = True
    quotes_passage = True

    def check(self, template):
        require(template.prompt is not None, "prompt", "a completion template needs a Jinja2 prompt")
        require(template.system is None, "system", "a completion template sends one text; put it in prompt")
        require(bool(template.answer_key), "answer_key", "name the output key the continuation fills (query)")
        require(bool(template.stop), "stop", 'list where the continuation ends (["\\n"] for a one-line answer)')
        _check_prompts(template, ("prompt",))
        _check_schema(template)
        properties = template.output_schema.get("properties", {})
        require(not template.output_schema or set(properties) == {template.answer_key}, "output_schema",
                f"a completion fills one key, {template.answer_key!r}; the schema has {sorted(properties)}")  # fmt: skip
        _check_outputs(template)
        _check_examples(template)

    def prompt_text(self, template, context, shots, seed):
        # Each worked example as the answer should come: the prompt, the answer, the stop, and a blank line.
        shown = [
            f"{template.text('prompt', template.example_context(context, example))} "
            f"{example.output[template.answer_key]}{template.stop[0]}\n"
            for example in template.pick_examples(context.get("language"), shots, seed)
        ]
        return "".join(shown) + template.text("prompt", context)

    def parse(self, template, answer):
        text = answer
        for stop in template.stop:
            text = text.split(stop, 1)[0]
        text = text.strip()
        if not text:
            return None, "empty"
        output = {template.answer_key: text}
        if template.output_schema:
            from st_retrofit.extras import require_module

            validator = require_module("jsonschema", "synthesis templates").Draft202012Validator
            if next(iter(validator(template.output_schema).iter_errors(output)), None) is not None:
                return None, "schema"
        return output, None


@TEMPLATE_KINDS.register
class HeuristicTemplate(TemplateKind):
    name = "heuristic"
    description = "no LLM: a method of st_retrofit.synth.backends.heuristic cuts the pair from the passage"
    needs_llm = False

    def check(self, template):
        require(bool(template.method), "method", "a heuristic template names its method")
        require(not template.examples, "examples", "only llm and completion templates take few-shot examples")

    def parse(self, template, answer):
        return json.loads(answer), None


@TEMPLATE_KINDS.register
class BrainstormTemplate(TemplateKind):
    name = "brainstorm"
    description = "chat messages asking an LLM for task descriptions, which fill {{ task }} of other templates"
    writes_pairs = False

    def check(self, template):
        require(template.prompt is not None, "prompt", "a brainstorm template needs a Jinja2 prompt")
        require(not template.examples, "examples", "only llm and completion templates take few-shot examples")
        _check_prompts(template, ("system", "prompt"))
        _check_schema(template)

    def messages(self, template, context, shots, seed):
        messages = [{"role": "system", "content": template.text("system", context)}] if template.system else []
        return messages + [{"role": "user", "content": template.text("prompt", context)}]
