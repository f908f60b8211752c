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

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.synth.backend_kinds import SYNTH_BACKENDS, SynthBackendKind
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
    from st_retrofit.synth.config import SOURCES, BackendConfig, SynthConfig
    from st_retrofit.synth.corpus import load_corpus
    from st_retrofit.synth.demo import LANGUAGES, TEMPLATES, build_demo_dataset
    from st_retrofit.synth.generator import OUTPUT_COLUMNS, SynthesisReport, SyntheticDataGenerator
    from st_retrofit.synth.source_kinds import SYNTH_SOURCES, SynthSourceKind
    from st_retrofit.synth.stage import select_templates, synthesize, synthesize_corpus, synthesize_demo
    from st_retrofit.synth.templates import SynthTemplate, TemplateLibrary, TemplateLibraryError
    from st_retrofit.synth.validation import PairValidator, parse_json_answer
    from st_retrofit.text import identify_language, normalize_language

_EXPORTS = {
    "GenerationRequest": "st_retrofit.synth.backends",
    "GenerationResult": "st_retrofit.synth.backends",
    "HeuristicBackend": "st_retrofit.synth.backends",
    "OpenAICompatibleBackend": "st_retrofit.synth.backends",
    "SynthBackend": "st_retrofit.synth.backends",
    "SynthBackendError": "st_retrofit.synth.backends",
    "TransformersBackend": "st_retrofit.synth.backends",
    "ResponseCache": "st_retrofit.synth.cache",
    "request_key": "st_retrofit.synth.cache",
    "load_corpus": "st_retrofit.synth.corpus",
    "LANGUAGES": "st_retrofit.synth.demo",
    "TEMPLATES": "st_retrofit.synth.demo",
    "build_demo_dataset": "st_retrofit.synth.demo",
    "OUTPUT_COLUMNS": "st_retrofit.synth.generator",
    "SynthesisReport": "st_retrofit.synth.generator",
    "SyntheticDataGenerator": "st_retrofit.synth.generator",
    "identify_language": "st_retrofit.text",
    "normalize_language": "st_retrofit.text",
    "select_templates": "st_retrofit.synth.stage",
    "synthesize": "st_retrofit.synth.stage",
    "SynthTemplate": "st_retrofit.synth.templates",
    "TemplateLibrary": "st_retrofit.synth.templates",
    "TemplateLibraryError": "st_retrofit.synth.templates",
    "PairValidator": "st_retrofit.synth.validation",
    "parse_json_answer": "st_retrofit.synth.validation",
    "SynthConfig": "st_retrofit.synth.config",
    "BackendConfig": "st_retrofit.synth.config",
    "SOURCES": "st_retrofit.synth.config",
    "SYNTH_SOURCES": "st_retrofit.synth.source_kinds",
    "SynthSourceKind": "st_retrofit.synth.source_kinds",
    "SYNTH_BACKENDS": "st_retrofit.synth.backend_kinds",
    "SynthBackendKind": "st_retrofit.synth.backend_kinds",
    "synthesize_demo": "st_retrofit.synth.stage",
    "synthesize_corpus": "st_retrofit.synth.stage",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
