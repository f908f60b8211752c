"""The kinds of ``synth.backend.type``: each registered class checks its settings and its environment, says which
templates it runs and who wrote the pairs (for the card), and builds its backend.

- ``heuristic``: no LLM; runs ``kind: heuristic`` templates (title to body, inverse cloze, cropping, facts);
- ``openai``: any OpenAI-compatible server (OpenAI, vLLM, TGI, llama.cpp, Ollama): chat for ``llm`` templates, the
  completions endpoint for ``completion`` templates;
- ``transformers``: a local model: a chat model for ``llm`` templates, any causal LM for ``completion``.

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

    def template_kinds(self, config: BackendConfig) -> tuple[str, ...]:
        """The template kinds it runs with these settings: an LLM's chat, or its plain-text completion
        (``prompt_format``). Heuristic templates need no backend and run beside any."""
        return ("completion",) if config.prompt_format == "completion" else ("llm",)

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

    def template_kinds(self, config):
        return ("heuristic",)

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
        from st_retrofit.models.resolve import OFFLINE_LLMS, OFFLINE_PREFIX
        from st_retrofit.synth.backends.base import SynthBackendError
        from st_retrofit.synth.backends.transformers_local import default_llm, resolve_llm

        model = config.model or default_llm(config.prompt_format)
        try:
            resolve_llm(model, config.gguf_file, build=False)
        except SynthBackendError as exc:
            raise ConfigError("model", str(exc)) from None
        entry = OFFLINE_LLMS.get(model.removeprefix(OFFLINE_PREFIX)) if model.startswith(OFFLINE_PREFIX) else None
        if entry is not None and entry.chat != (config.prompt_format == "chat"):
            wanted = "chat" if entry.chat else "completion"
            raise ConfigError(
                "prompt_format",
                f"{model} is {'a chat' if entry.chat else 'a base (not chat)'} model: set prompt_format: {wanted}",
            )
        if config.response_format == "json_schema":
            try:
                require_module("llguidance", "constrained decoding")
            except MissingExtraError as exc:
                raise ConfigError("response_format", exc.message) from None

    def writer(self, config):
        from st_retrofit.synth.backends.transformers_local import default_llm

        return config.model or default_llm(config.prompt_format)
