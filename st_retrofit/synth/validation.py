"""Parsing and checking generated answers before they become training pairs.

Rules, in order, each counted under its name in the report: ``invalid_json`` (no JSON object in the answer),
``schema`` (the template's output schema rejects it), ``empty``, ``length`` (the template's character bounds),
``copy`` (query and document are the same text), ``copied_passage`` (an LLM query
that repeats 20 or more characters of its passage verbatim, which the prompts forbid: it teaches string matching), ``language`` (language ID says a column is confidently in another
language than the template asks for), ``duplicate`` (a query seen before, after normalization) and
``near_duplicate`` (MinHash-LSH Jaccard similarity of character 5-grams above the threshold).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from st_retrofit.text import identify_language, normalize_text, same_language

if TYPE_CHECKING:
    from st_retrofit.synth.config import ValidationConfig
    from st_retrofit.synth.templates import SynthTemplate

RULES = (
    "invalid_json", "schema", "empty", "length", "copy", "copied_passage", "language", "duplicate", "near_duplicate"
)  # fmt: skip
MIN_COPIED_CHARS = 20
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def json_object_end(text: str) -> int | None:
    """The index just past the first complete top-level JSON object in ``text`` (braces in strings ignored)."""
    depth, in_string, escaped, started = 0, False, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth, started = depth + 1, True
        elif ch == "}" and started:
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def parse_json_answer(text: str, schema: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The first JSON object in ``text`` that ``schema`` accepts, and ``None``; or ``None`` and the rule it broke.

    Models wrap JSON in code fences or prose, or write several objects; each candidate object is tried in order.
    """
    from jsonschema import Draft202012Validator

    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    objects = []
    for candidate in candidates:
        for start in [i for i, ch in enumerate(candidate) if ch == "{"]:
            end = json_object_end(candidate[start:])
            if end is None:
                continue
            try:
                value = json.loads(candidate[start : start + end])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                objects.append(value)
    if not objects:
        return None, "invalid_json"
    validator = Draft202012Validator(schema or {})
    for value in objects:
        if validator.is_valid(value):
            return value, None
    return None, "schema"


def pair_from_output(template: SynthTemplate, output: dict[str, Any], context: dict[str, Any]) -> dict[str, str]:
    """``{"query": ..., "document": ...}`` from the template's ``pair`` expressions."""
    pair = {}
    for column, expr in template.pair.items():
        value = output.get(expr[len("output.") :]) if expr.startswith("output.") else context.get(expr)
        pair[column] = value.strip() if isinstance(value, str) else ""
    return pair


def _shingles(text: str, n: int = 5) -> list[bytes]:
    text = normalize_text(text)
    if len(text) <= n:
        return [text.encode()]
    return [text[i : i + n].encode() for i in range(len(text) - n + 1)]


class PairValidator:
    """Checks pairs one at a time and remembers the accepted queries (for the duplicate rules).

    Use one validator per output split: a query is a duplicate of any query accepted before it for a document in
    the same language (the same opening sentence may be a query for its own passage and for its translation).

    Args:
        config: the rules' settings (:class:`~st_retrofit.recipe.ValidationConfig`).
    """

    def __init__(self, config: ValidationConfig) -> None:
        self.config = config
        self._seen: set[tuple[str, str]] = set()
        self._lsh: dict[str, Any] | None = None
        self._minhashes: dict[str, Any] = {}
        if config.near_duplicate_threshold is not None:
            from st_retrofit.extras import require_module

            MinHashLSH = require_module("datasketch", "synth.validation.near_duplicate_threshold").MinHashLSH

            # Banding weighted against misses (more candidates); each candidate is then checked by its estimated
            # Jaccard similarity, so extra candidates cost time, not precision.
            self._lsh = defaultdict(
                lambda: MinHashLSH(
                    threshold=config.near_duplicate_threshold, num_perm=config.num_perm, weights=(0.1, 0.9)
                )
            )  # one index per document language

    def check(
        self, template: SynthTemplate, answer: str, context: dict[str, Any]
    ) -> tuple[dict[str, str] | None, str | None]:
        """The accepted pair and ``None``, or ``None`` and the name of the rule that rejected it."""
        output, rule = template.kind_entry.parse(template, answer)
        if output is None:
            return None, rule
        pair = pair_from_output(template, output, context)
        if not pair["query"] or not pair["document"]:
            return None, "empty"
        if self.config.check_lengths:
            for column, (low, high) in template.lengths.items():
                if not low <= len(pair[column]) <= high:
                    return None, "length"
        query = normalize_text(pair["query"])
        if query == normalize_text(pair["document"]):
            return None, "copy"
        if (
            template.kind_entry.quotes_passage
            and template.pair["document"] == "passage"
            and len(query) >= MIN_COPIED_CHARS
            and query in normalize_text(context["passage"])
        ):
            return None, "copied_passage"
        if self.config.check_language:
            for column in template.languages:
                expected = template.language_of(column, context)
                predicted, probability = identify_language(pair[column])
                if probability >= self.config.language_confidence and not same_language(expected, predicted):
                    return None, "language"
        key = (template.language_of("document", context), query)
        if self.config.deduplicate and key in self._seen:
            return None, "duplicate"
        minhash = None
        if self._lsh is not None:
            from datasketch import MinHash

            minhash = MinHash(num_perm=self.config.num_perm, seed=1)
            minhash.update_batch(_shingles(pair["query"]))
            threshold = self.config.near_duplicate_threshold
            lsh = self._lsh[key[0]]
            if any(minhash.jaccard(self._minhashes[other]) >= threshold for other in lsh.query(minhash)):
                return None, "near_duplicate"
        self._seen.add(key)
        if minhash is not None:
            name = str(len(self._minhashes))
            lsh.insert(name, minhash)
            self._minhashes[name] = minhash
        return pair, None
