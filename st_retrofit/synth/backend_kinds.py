"""The kinds of ``synth.backend.type``: each registered class checks its settings and its environment, says which
templates it runs and who wrote the pairs (for the card), and builds its backend.

- ``heuristic``: no LLM; runs ``kind: heuristic`` templates (title to body, inverse cloze, cropping, facts);
- ``openai``: any OpenAI-compatible server (OpenAI, vLLM, TGI, llama.cpp, Ollama);
- ``transformers``: a local chat model.

A new backend subclasses :class:`SynthBackendKind` and is registered with ``@SYNTH_BACKENDS.register``; its
``backend`` names the :class:`~st_retrofit.synth.backends.base.SynthBackend` class by module path, so a recipe is
checked without importing an LLM client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

from st_retrofit.config import ConfigError, require
from st_retrofit.registry import Kind, Registry

if TYPE_CHECKING:
    from st_retrofit.synth.backends import SynthBackend
    from st_retrofit.synth.config import BackendConfig


class SynthBackendKind(Kind):
    """One way of writing pairs."""

    backend: ClassVar[str]  # "module:Class" of the SynthBackend
    template_kind: ClassVar[str] = "llm"  # the kind of template it runs

    def backend_class(self) -> type[SynthBackend]:
        module, name = self.backend.split(":")
        return getattr(importlib.import_module(module), name)

    def check(self, config: BackendConfig) -> None:
        """Shape checks of the section for this backend (keys relative to ``synth.backend``)."""

    def check_config_environment(self, config: BackendConfig) -> None:
        """What the section needs installed or on disk (the modules first)."""
        self.check_environment()

    def writer(self, config: BackendConfig) -> str:
        """Who wrote the pairs, for the card."""
        return str(config.model)


SYNTH_BACKENDS: Registry[SynthBackendKind] = Registry("synth backend", SynthBackendKind)
SynthBackendName = SYNTH_BACKENDS.field()


@SYNTH_BACKENDS.register
class HeuristicKind(SynthBackendKind):
    name = "heuristic"
    description = "no LLM: pairs from the documents' own structure (heuristic templates)"
    backend = "st_retrofit.synth.backends.heuristic:HeuristicBackend"
    template_kind = "heuristic"

    def writer(self, config):
        return "heuristics"


@SYNTH_BACKENDS.register
class OpenAIKind(SynthBackendKind):
    name = "openai"
    description = "any OpenAI-compatible server (OpenAI, vLLM, TGI, llama.cpp, Ollama)"
    backend = "st_retrofit.synth.backends.openai_compatible:OpenAICompatibleBackend"
    modules = ("openai",)

    def check(self, config):
        require(
            bool(config.model), "model", "the openai backend needs the model name the server serves (e.g. gpt-4o-mini)"
        )


@SYNTH_BACKENDS.register
class TransformersKind(SynthBackendKind):
    name = "transformers"
    description = "a local chat model (transformers; GGUF files too)"
    backend = "st_retrofit.synth.backends.transformers_local:TransformersBackend"

    def check_config_environment(self, config):
        from st_retrofit.extras import MissingExtraError, require_module
        from st_retrofit.synth.backends.base import SynthBackendError
        from st_retrofit.synth.backends.transformers_local import resolve_llm

        try:
            resolve_llm(config.model or "offline:smollm2-135m-instruct", config.gguf_file)
        except SynthBackendError as exc:
            raise ConfigError("model", str(exc)) from None
        if config.response_format == "json_schema":
            try:
                require_module("llguidance", "constrained decoding")
            except MissingExtraError as exc:
                raise ConfigError("response_format", exc.message) from None

    def writer(self, config):
        return config.model or "offline:smollm2-135m-instruct"
