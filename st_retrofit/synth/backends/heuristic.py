"""LLM-free pairs cut from the passage itself: title to body, inverse cloze, lead sentence, a passage's lead
against its translation, random cropping, fact templates.

They need nothing but the corpus, so a corpus becomes training pairs anywhere (CI, an air-gapped machine, a first
run before an LLM server is up). They are weaker than LLM-written pairs, since each query shares the wording of its
passage; the literature uses them for pre-training (ICT: Lee et al., 2019; cropping: Izacard et al., 2022).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from st_retrofit.config import StRetrofitError
from st_retrofit.synth.backends.base import GenerationRequest, GenerationResult, SynthBackend
from st_retrofit.text import normalize_language

# A sentence ends at . ! ? (Latin, Greek, Cyrillic...), ؟ (Arabic), । (Devanagari), or 。！？ (CJK, no space after).
_SENTENCE = re.compile(r"[^.!?؟।。！？]*(?:[.!?؟।]+(?=\s|$)|[。！？]+|$)", re.S)
_ENV = SandboxedEnvironment(undefined=StrictUndefined)


class HeuristicError(StRetrofitError, ValueError):
    """The method cannot make a pair from this passage (too few sentences, no question for its language)."""


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text``, surrounding whitespace excluded."""
    spans = []
    for match in _SENTENCE.finditer(text):
        start, end = match.span()
        chunk = text[start:end]
        stripped = chunk.strip()
        if stripped:
            offset = start + len(chunk) - len(chunk.lstrip())
            spans.append((offset, offset + len(stripped)))
    return spans


def _units(text: str) -> tuple[list[str], str]:
    """Words for space-delimited text, characters for scripts written without spaces (Chinese, Japanese, Thai)."""
    words = text.split()
    if len(words) >= 0.05 * len(text):
        return words, " "
    return [ch for ch in text if not ch.isspace()], ""


def title_body(context: dict[str, Any], rng: random.Random) -> dict[str, str]:
    return {"query": context["title"].strip(), "document": context["passage"]}


def inverse_cloze(
    context: dict[str, Any], rng: random.Random, keep_probability: float = 0.1, min_sentences: int = 3
) -> dict[str, str]:
    """A random sentence is the query; it is removed from the passage except with ``keep_probability`` (ORQA's
    10%, so that the model also learns plain lexical matches)."""
    text = context["passage"]
    spans = sentence_spans(text)
    if len(spans) < min_sentences:
        raise HeuristicError(f"inverse_cloze: {len(spans)} sentence(s), needs {min_sentences}")
    start, end = spans[rng.randrange(len(spans))]
    document = text if rng.random() < keep_probability else (text[:start].rstrip() + " " + text[end:].lstrip())
    return {"query": text[start:end], "document": document.strip()}


def lead_sentence(
    context: dict[str, Any], rng: random.Random, keep_probability: float = 0.1, min_sentences: int = 2
) -> dict[str, str]:
    """The opening sentence is the query, the rest of the passage the document (the whole passage with
    ``keep_probability``). Reference text states what it is about first ("tar saves many files together..."), so
    the lead sentence is the closest label-free stand-in for a title or summary query."""
    text = context["passage"]
    spans = sentence_spans(text)
    if len(spans) < min_sentences:
        raise HeuristicError(f"lead_sentence: {len(spans)} sentence(s), needs {min_sentences}")
    start, end = spans[0]
    document = text if rng.random() < keep_probability else text[end:].lstrip()
    return {"query": text[start:end], "document": document.strip()}


def parallel_lead(context: dict[str, Any], rng: random.Random) -> dict[str, str]:
    """The passage's opening sentence is the query, its translation in the target language (the corpus's
    ``parallel_column``) the document: a cross-lingual pair written by people on both sides."""
    spans = sentence_spans(context["passage"])
    if not spans:
        raise HeuristicError("parallel_lead: the passage has no sentence")
    start, end = spans[0]
    return {"query": context["passage"][start:end], "document": context["parallel_passage"].strip()}


def random_crop(
    context: dict[str, Any], rng: random.Random, min_ratio: float = 0.1, max_ratio: float = 0.5
) -> dict[str, str]:
    """Two independent random spans, each ``min_ratio`` to ``max_ratio`` of the passage's words (characters for
    scripts without spaces), as Contriever builds positive pairs."""
    units, joiner = _units(context["passage"])
    if len(units) < 4:
        raise HeuristicError(f"random_crop: {len(units)} word(s), needs 4")
    crops = []
    for _ in range(2):
        length = max(2, round(len(units) * rng.uniform(min_ratio, max_ratio)))
        start = rng.randrange(len(units) - length + 1)
        crops.append(joiner.join(units[start : start + length]))
    return {"query": crops[0], "document": crops[1]}


def fact(
    context: dict[str, Any], rng: random.Random, questions: dict[str, list[str]] | None = None, lead_sentences: int = 2
) -> dict[str, str]:
    """A question template of the passage's language about its title, answered by the opening sentences (where
    encyclopedic text states its defining facts)."""
    language = normalize_language(context.get("language") or "")
    templates = (questions or {}).get(language)
    if not templates:
        raise HeuristicError(f"fact: no question templates for language {language!r}")
    text = context["passage"]
    spans = sentence_spans(text)[:lead_sentences]
    query = _ENV.from_string(rng.choice(templates)).render(title=context["title"].strip())
    return {"query": query, "document": text[spans[0][0] : spans[-1][1]] if spans else text}


METHODS: dict[str, Callable[..., dict[str, str]]] = {
    "title_body": title_body,
    "inverse_cloze": inverse_cloze,
    "lead_sentence": lead_sentence,
    "parallel_lead": parallel_lead,
    "random_crop": random_crop,
    "fact": fact,
}


class HeuristicBackend(SynthBackend):
    """Renders ``kind: heuristic`` templates: the template's ``method`` (one of :data:`METHODS`) with its
    ``params``, seeded per request. Answers are the same JSON an LLM template returns, so they go through the same
    validation. Nothing is cached (it is cheaper to recompute than to look up)."""

    kind = "heuristic"
    model = "heuristic"
    cacheable = False

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        for request in requests:
            template = request.template
            method = METHODS.get(template.method) if template is not None else None
            if method is None:
                name = template.method if template is not None else None
                yield GenerationResult(request, error=f"unknown heuristic method {name!r}; known: {list(METHODS)}")
                continue
            try:
                output = method(request.context, random.Random(request.seed), **template.params)
            except HeuristicError as exc:  # the template does not apply to this passage: skipped, not failed
                yield GenerationResult(request, error=str(exc), skipped=True)
                continue
            yield GenerationResult(request, text=json.dumps(output, ensure_ascii=False))
