"""Any OpenAI-compatible server (OpenAI, vLLM, TGI, llama.cpp server, Ollama) via ``openai``: chat completions for
``llm`` templates, completions for ``completion`` templates."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from st_retrofit.synth.backends.base import GenerationRequest, GenerationResult, SynthBackend, SynthBackendError

if TYPE_CHECKING:
    from st_retrofit.synth.config import BackendConfig

logger = logging.getLogger(__name__)

# Servers that need no key still require the client to send one; vLLM's documentation uses this placeholder.
NO_KEY = "EMPTY"


class OpenAICompatibleBackend(SynthBackend):
    """Chat completions from any server that speaks the OpenAI API, ``concurrency`` requests in flight.

    Retries are the ``openai`` client's own: exponential backoff with jitter on connection errors, timeouts, 408,
    409, 429 and 5xx answers, honouring ``Retry-After``, up to ``max_retries`` times. A request that still fails
    is reported as an error (not cached, so the next run asks again); an authentication error or an unknown model
    stops the run, since every other request would fail the same way.

    The API key is read from the environment variable ``api_key_env`` when the backend is built and only handed
    to the client: it is not stored on the backend, logged, or part of the cache key.

    Args:
        model: the model name the server knows (``gpt-4o-mini``, ``Qwen/Qwen2.5-7B-Instruct``...).
        base_url: the server's ``/v1`` URL; ``None`` = ``$OPENAI_BASE_URL`` or OpenAI.
        api_key_env: the environment variable holding the key; unset or empty sends a placeholder (local servers).
        concurrency: requests in flight.
        max_retries: retries per request after the first attempt.
        timeout: seconds per attempt.
        temperature: sampling temperature.
        top_p: nucleus sampling; ``None`` = the server's default.
        max_tokens: the longest answer.
        response_format: ``json_object`` (JSON mode), ``json_schema`` (the template's schema, for servers with
            structured outputs) or ``none``.
        send_seed: send each request's seed (OpenAI and vLLM use it for reproducible sampling).
        extra_body: extra JSON fields for the server (e.g. vLLM's ``{"top_k": 20}``).

    Example::

        backend = OpenAICompatibleBackend("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1")
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 120.0,
        temperature: float = 1.0,
        top_p: float | None = None,
        max_tokens: int = 1024,
        response_format: str = "json_object",
        send_seed: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        from st_retrofit.extras import require_module

        OpenAI = require_module("openai", "synth.backend.type openai").OpenAI

        if response_format not in ("json_object", "json_schema", "none"):
            raise ValueError(f"response_format: expected json_object, json_schema or none, got {response_format!r}")
        self.model, self.base_url, self.concurrency = model, base_url, concurrency
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.response_format, self.send_seed, self.extra_body = response_format, send_seed, dict(extra_body or {})
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "")
        if not key:
            logger.info("$%s is not set; sending no API key (fine for local servers)", api_key_env)
        self._client = OpenAI(api_key=key or NO_KEY, base_url=base_url, max_retries=max_retries, timeout=timeout)

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend(model={self.model!r}, base_url={self.base_url!r})"

    @classmethod
    def from_config(cls, config: BackendConfig) -> OpenAICompatibleBackend:
        return cls(
            config.model,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            concurrency=config.concurrency,
            max_retries=config.max_retries,
            timeout=config.timeout,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            response_format=config.response_format,
            send_seed=config.send_seed,
            extra_body=config.extra_body,
        )

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format,
            "extra_body": self.extra_body,
        }

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if request.prompt is not None:  # a completion template: the completions endpoint, plain text
            arguments |= {"prompt": request.prompt, "stop": list(request.stop) or None}
        else:
            arguments["messages"] = request.messages
        if self.top_p is not None:
            arguments["top_p"] = self.top_p
        if self.send_seed:
            arguments["seed"] = request.seed
        chat = request.prompt is None  # a continuation is text: no JSON mode
        if chat and self.response_format == "json_object":
            arguments["response_format"] = {"type": "json_object"}
        elif chat and self.response_format == "json_schema" and request.schema:
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.schema},
            }
        if self.extra_body:
            arguments["extra_body"] = self.extra_body
        return arguments

    def _call(self, request: GenerationRequest) -> GenerationResult:
        import openai

        endpoint = self._client.completions if request.prompt is not None else self._client.chat.completions
        try:
            response = endpoint.create(**self._arguments(request))
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise SynthBackendError(
                f"the server at {self.base_url or 'api.openai.com'} refused the key from ${self.api_key_env} "
                f"({exc.status_code}); set a valid key in ${self.api_key_env}"
            ) from None
        except openai.NotFoundError:
            raise SynthBackendError(
                f"the server at {self.base_url or 'api.openai.com'} has no model {self.model!r} (404); "
                f"set synth.backend.model to a model it serves"
            ) from None
        except openai.APIStatusError as exc:
            return GenerationResult(request, error=f"HTTP {exc.status_code}")
        except openai.APITimeoutError:
            return GenerationResult(request, error="timeout")
        except openai.APIConnectionError:
            return GenerationResult(request, error="connection error")
        choice = response.choices[0] if response.choices else None
        text = None if choice is None else (choice.text if request.prompt is not None else choice.message.content)
        if text is None:
            return GenerationResult(request, error="empty answer")
        usage = response.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) if response.usage else {}
        return GenerationResult(request, text=text, usage=usage)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="synth-openai")
        try:
            futures = [executor.submit(self._call, request) for request in requests]
            for future in as_completed(futures):
                yield future.result()
        finally:
            # On an error or Ctrl-C: drop what has not started; answers already yielded are in the cache.
            executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._client.close()
