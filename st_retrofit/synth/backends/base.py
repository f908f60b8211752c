"""What every generation backend implements: requests in, raw answer texts out, in completion order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from st_retrofit.config import StRetrofitError

if TYPE_CHECKING:
    from st_retrofit.synth.config import BackendConfig
    from st_retrofit.synth.templates import SynthTemplate


class SynthBackendError(StRetrofitError, RuntimeError):
    """A backend cannot work at all (bad credentials, unknown model, server unreachable): the run stops."""


@dataclass(frozen=True)
class GenerationRequest:
    """One call: chat ``messages`` for chat LLMs, a ``prompt`` to continue for base LLMs, or the passage
    ``context`` and ``template`` for heuristics.

    Args:
        key: the prompt hash that caches the answer.
        messages: chat messages (``llm``/``brainstorm`` templates).
        schema: the JSON schema the answer must satisfy (used for JSON modes and prefills).
        seed: per-request seed (sent to servers that take one, used by local sampling and heuristics).
        template: the template being rendered.
        context: the passage fields and drawn variables.
        prompt: the text to continue (``completion`` templates), sent without a chat template.
        stop: where a continuation ends (``completion``).
    """

    key: str
    messages: list[dict[str, str]]
    schema: dict[str, Any] | None
    seed: int
    template: SynthTemplate | None = None
    context: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    """A backend's answer to one request: ``text`` on success, else ``error`` (not cached; retried next run).
    ``skipped`` marks a template that does not apply to the passage (too short, no title): counted apart from
    failures, which say something is wrong."""

    request: GenerationRequest
    text: str | None = None
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


class SynthBackend(ABC):
    """A text generator for :class:`~st_retrofit.synth.SyntheticDataGenerator`.

    ``identity()`` is everything that changes the answers (kind, model, sampling settings, never secrets); it
    goes into each request's cache key, so a cached answer is reused only by an equivalent backend.
    """

    kind: str = ""
    model: str = ""
    cacheable: bool = True

    @classmethod
    def from_config(cls, config: BackendConfig) -> SynthBackend:
        """The backend a recipe's ``synth.backend`` section describes (the registry in
        :data:`st_retrofit.synth.backend_kinds.SYNTH_BACKENDS` maps ``type`` to the class)."""
        return cls()

    @abstractmethod
    def identity(self) -> dict[str, Any]: ...

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        """Yield one result per request as each finishes (not necessarily in order)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients or models."""
