"""Synthetic training data: template-driven query/document generation with LLM or heuristic backends.

- :class:`TemplateLibrary`: YAML + Jinja2 templates by task type, each with a JSON output schema;
- backends: :class:`OpenAICompatibleBackend` (any OpenAI-compatible server), :class:`TransformersBackend` (a local
  chat model, offline SmolLM2 included), :class:`HeuristicBackend` (no LLM);
- :class:`SyntheticDataGenerator`: prompts -> backend -> validation -> pairs with provenance, capped per language
  and task, every answer cached by prompt hash in a :class:`ResponseCache`;
- :func:`load_corpus` reads passages from files, ``datasets`` folders or the Hub;
- :func:`build_demo_dataset`: the embedded demo data of the quickstart.
"""

from __future__ import annotations

from st_retrofit.synth.backends import (
    GenerationRequest,
    GenerationResult,
    HeuristicBackend,
    OpenAICompatibleBackend,
    SynthBackend,
    SynthBackendError,
    TransformersBackend,
)
from st_retrofit.synth.cache import ResponseCache, request_key
from st_retrofit.synth.corpus import CorpusError, load_corpus
from st_retrofit.synth.demo import LANGUAGES, TEMPLATES, build_demo_dataset
from st_retrofit.synth.generator import OUTPUT_COLUMNS, SynthesisReport, SyntheticDataGenerator
from st_retrofit.synth.languages import identify_language, normalize_language
from st_retrofit.synth.stage import SynthSettingError, build_backend, select_templates, synthesize
from st_retrofit.synth.templates import SynthTemplate, TemplateLibrary, TemplateLibraryError
from st_retrofit.synth.validation import PairValidator, parse_json_answer

__all__ = [
    "LANGUAGES",
    "OUTPUT_COLUMNS",
    "TEMPLATES",
    "CorpusError",
    "GenerationRequest",
    "GenerationResult",
    "HeuristicBackend",
    "OpenAICompatibleBackend",
    "PairValidator",
    "ResponseCache",
    "SynthBackend",
    "SynthBackendError",
    "SynthSettingError",
    "SynthTemplate",
    "SynthesisReport",
    "SyntheticDataGenerator",
    "TemplateLibrary",
    "TemplateLibraryError",
    "TransformersBackend",
    "build_backend",
    "build_demo_dataset",
    "identify_language",
    "load_corpus",
    "normalize_language",
    "parse_json_answer",
    "request_key",
    "select_templates",
    "synthesize",
]
