"""Generation backends: OpenAI-compatible servers, local transformers chat models, and LLM-free heuristics."""

from __future__ import annotations

from st_retrofit.models.resolve import OFFLINE_LLMS
from st_retrofit.synth.backends.base import GenerationRequest, GenerationResult, SynthBackend, SynthBackendError
from st_retrofit.synth.backends.heuristic import METHODS, HeuristicBackend
from st_retrofit.synth.backends.openai_compatible import OpenAICompatibleBackend
from st_retrofit.synth.backends.transformers_local import TransformersBackend, resolve_llm

__all__ = [
    "METHODS",
    "OFFLINE_LLMS",
    "GenerationRequest",
    "GenerationResult",
    "HeuristicBackend",
    "OpenAICompatibleBackend",
    "SynthBackend",
    "SynthBackendError",
    "TransformersBackend",
    "resolve_llm",
]
