"""Recipe section ``synth``: where the training and held-out pairs come from, and its checks.

Two registries replace string switches: :data:`~st_retrofit.synth.source_kinds.SYNTH_SOURCES` (``demo``,
``corpus``: what each reads, checks, describes and how it runs) and :data:`~st_retrofit.synth.backend_kinds.SYNTH_BACKENDS` (``heuristic``, ``openai``,
``transformers``: each kind's checks and the backend class ``synth.backend.type`` builds). Both name their code by
module path, so that a recipe is checked without importing an LLM client.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from st_retrofit.config import ConfigError, ConfigModel, keyed, require
from st_retrofit.synth.backend_kinds import SYNTH_BACKENDS, SynthBackendKind, SynthBackendName
from st_retrofit.synth.demo import LANGUAGES, QUERY_KINDS
from st_retrofit.synth.source_kinds import SYNTH_SOURCES, SynthSourceKind, SynthSourceName

if TYPE_CHECKING:
    from st_retrofit.synth.backends import SynthBackend


class CorpusConfig(ConfigModel):
    """The passages to synthesize from (recipe section ``synth.corpus``; see :func:`st_retrofit.synth.load_corpus`).

    Args:
        path: a jsonl/json/parquet/csv/tsv file, a folder saved by ``datasets``, or a Hub dataset name.
        split: the split of a folder or Hub dataset.
        config_name: the Hub dataset's configuration; ``{language}`` in it reads one configuration per entry of
            ``languages`` (``20231101.{language}`` for ``wikimedia/wikipedia``).
        text_column: the passage text.
        title_column: passage titles (optional; title templates need them).
        language_column: language codes (optional; identified from the text when absent or empty).
        id_column: document ids (optional; a hash of the text when absent).
        parallel_column: a column whose equal values mark translations of one document (optional; the
            ``parallel`` templates pair a passage with its translations).
        languages: keep only passages in these languages; ``null`` = all.
        max_documents: read at most this many passages (after the language filter; per language, and streamed,
            with a ``{language}`` configuration).
    """

    path: str | None = Field(
        None, json_schema_extra={"local_path": True}, description="Corpus file, folder or Hub dataset."
    )
    split: str = Field("train", description="Split of a folder or Hub dataset.")
    config_name: str | None = Field(None, description="Hub dataset configuration.")
    text_column: str = Field("text", description="Passage text column.")
    title_column: str | None = Field("title", description="Title column (optional).")
    language_column: str | None = Field("language", description="Language column (optional).")
    id_column: str | None = Field("id", description="Document id column (optional).")
    parallel_column: str | None = Field(None, description="Column grouping translations of one document.")
    languages: list[str] | None = Field(None, description="Languages to keep; null = all.")
    max_documents: int | None = Field(None, ge=1, description="Read at most this many passages.")

    def check_environment(self) -> None:
        """The path exists when it is local, and a local file's header has ``text_column`` (and
        ``parallel_column``, when set)."""
        from st_retrofit.dataio import check_hub_dataset, is_local, local_columns

        path = self.path or ""
        if is_local(path) and not Path(path).expanduser().exists():
            raise ConfigError("path", f"{path} does not exist")
        if path and not is_local(path):
            check_hub_dataset(path)
        columns = local_columns(path, self.split)
        for key, name in (("text_column", self.text_column), ("parallel_column", self.parallel_column)):
            if columns is not None and name is not None and name not in columns:
                raise ConfigError(key, f"the corpus has no column {name!r}; its columns are {columns}")
        local = Path(path).expanduser()
        if local.is_file() and local.suffix.lower() == ".jsonl" and _rows_at_least(local, 2) < 2:
            raise ConfigError(
                "path",
                f"{path} holds one document; pairs, a held-out split and hard negatives need at least two "
                "(every document but a query's own is a candidate negative)",
            )


def _rows_at_least(path: Path, wanted: int) -> int:
    """How many non-empty lines ``path`` has, counting no further than ``wanted`` (a large file is not read)."""
    found = 0
    with path.open("rb") as handle:
        for raw in handle:
            found += bool(raw.strip())
            if found >= wanted:
                break
    return found


class BackendConfig(ConfigModel):
    """What writes the pairs (recipe section ``synth.backend``).

    Args:
        type: a registered :data:`~st_retrofit.synth.backend_kinds.SYNTH_BACKENDS` kind: ``heuristic`` (no LLM: title to body, inverse cloze, cropping, fact
            templates), ``openai`` (any OpenAI-compatible server: OpenAI, vLLM, TGI, llama.cpp, Ollama) or
            ``transformers`` (a local chat model).
        model: the server's model name (``openai``, required) or a local chat model (``transformers``; ``null`` =
            ``offline:smollm2-135m-instruct``).
        base_url: ``openai``: the server's ``/v1`` URL; ``null`` = ``$OPENAI_BASE_URL`` or OpenAI.
        api_key_env: ``openai``: the environment variable holding the key (the key itself never goes in a recipe).
        concurrency: ``openai``: requests in flight.
        max_retries: ``openai``: retries on 429, 5xx, timeouts and connection errors, with exponential backoff.
        timeout: ``openai``: seconds per attempt.
        temperature: sampling temperature (0 = greedy for ``transformers``).
        top_p: nucleus sampling; ``null`` = the backend's default.
        max_tokens: the longest answer, in tokens.
        response_format: ``json_object``, ``json_schema`` or ``none``. ``openai``: the request's JSON mode
            (``json_schema`` = structured outputs). ``transformers``: ``json_schema`` constrains decoding to the
            template's ``output_schema`` (llguidance: every answer parses and validates); the others leave the
            model free, with ``prefill_json`` as its only help.
        send_seed: ``openai``: send a per-request seed.
        extra_body: ``openai``: extra request fields for the server.
        gguf_file: ``transformers``: the GGUF file in ``model``.
        device: ``transformers``: ``cuda``, ``cpu``...; ``null`` = CUDA when available.
        dtype: ``transformers``: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        batch_size: ``transformers``: prompts per generation batch.
        prefill_json: ``transformers``: start each answer with the schema's first key, stop when the JSON closes
            (unused with ``response_format: json_schema``, which writes the JSON itself).
        prompt_format: ``chat`` runs ``llm`` templates through the model's chat template (instruction-tuned
            models); ``completion`` runs ``completion`` templates as plain text to continue (base models, which
            follow no chat: ``offline:gemma3-270m``), through the server's completions endpoint for ``openai``.
    """

    type: SynthBackendName = Field("heuristic", description="Backend.")
    model: str | None = Field(None, description="Model name or path.")
    base_url: str | None = Field(None, description="openai: server URL ending in /v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: env variable with the key.")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight.")
    max_retries: int = Field(6, ge=0, description="openai: retries per request.")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per attempt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling.")
    max_tokens: int = Field(1024, ge=1, description="Longest answer in tokens.")
    response_format: Literal["json_object", "json_schema", "none"] = Field(
        "json_object", description="JSON mode (transformers: json_schema = constrained decoding)."
    )
    send_seed: bool = Field(True, description="openai: per-request seed.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="openai: extra request fields.")
    gguf_file: str | None = Field(None, description="transformers: GGUF file name.")
    device: str | None = Field(None, description="transformers: device.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="dtype.")
    batch_size: int = Field(8, ge=1, description="transformers: prompts per batch.")
    prefill_json: bool = Field(True, description="transformers: prefill the JSON answer.")
    prompt_format: Literal["chat", "completion"] = Field(
        "chat", description="chat: llm templates; completion: completion templates, for base models."
    )

    @model_validator(mode="after")
    def _check(self) -> BackendConfig:
        self.kind.check(self)
        require(
            not self.api_key_env.startswith(("sk-", "hf_")),
            "api_key_env",
            "expected the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key; never put keys in recipes",
        )
        return self

    @property
    def kind(self) -> SynthBackendKind:
        return SYNTH_BACKENDS[self.type]

    def backend_class(self) -> type[SynthBackend]:
        return self.kind.backend_class()

    def build(self) -> SynthBackend:
        """The backend this section describes (:meth:`SynthBackend.from_config` of the registered class)."""
        return self.backend_class().from_config(self)

    def check_environment(self) -> None:
        with keyed("type"):
            self.kind.check_environment()
        self.kind.check_config_environment(self)


class BrainstormConfig(ConfigModel):
    """The brainstorm step (recipe section ``synth.brainstorm``): an LLM invents retrieval tasks first, and each
    request of a template that asks for it gets one of them (Wang et al., 2024).

    Args:
        enabled: run the step for templates that name a brainstorm template.
        rounds: brainstorm calls per template (different seeds; their tasks are pooled).
        tasks_per_round: tasks asked for per call.
    """

    enabled: bool = Field(True, description="Brainstorm tasks first.")
    rounds: int = Field(2, ge=1, description="Calls per template.")
    tasks_per_round: int = Field(20, ge=1, description="Tasks per call.")


class ValidationConfig(ConfigModel):
    """Checks on generated pairs (recipe section ``synth.validation``; see :mod:`st_retrofit.synth.validation`).

    Args:
        check_language: reject a pair when language ID (py3langid) says a column is in another language than the
            template asks for, with at least ``language_confidence``.
        language_confidence: the probability above which a language mismatch rejects (short texts identify
            poorly; uncertain ones pass).
        check_lengths: apply each template's character bounds.
        deduplicate: reject queries equal to an earlier one after normalization (case, punctuation, spacing).
        near_duplicate_threshold: reject queries whose character 5-gram Jaccard similarity to an earlier one
            (MinHash-LSH) is at least this; ``null`` disables.
        num_perm: MinHash permutations.
    """

    check_language: bool = Field(True, description="Language ID check.")
    language_confidence: float = Field(0.5, ge=0, le=1, description="Mismatch probability that rejects.")
    check_lengths: bool = Field(True, description="Template length bounds.")
    deduplicate: bool = Field(True, description="Drop exact duplicate queries.")
    near_duplicate_threshold: float | None = Field(0.9, gt=0, le=1, description="MinHash Jaccard threshold.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")


# The pre-registry name of SYNTH_SOURCES (0.2.0's first releases).
SOURCES = SYNTH_SOURCES


class SynthConfig(ConfigModel):
    """Training data synthesis (recipe section ``synth``).

    ``source: demo`` renders the embedded multilingual fact templates (no corpus, no LLM; the quickstart).
    ``source: corpus`` turns the user's passages into pairs with the template library and a backend, validates
    them, and holds out ``eval_fraction`` of the documents as the ``eval`` split.

    Args:
        source: a registered :data:`~st_retrofit.synth.source_kinds.SYNTH_SOURCES` kind: ``demo`` or ``corpus``.
        languages: ``demo``: language codes to render.
        train_entities: ``demo``: entities (documents per language) in the train split.
        eval_entities: ``demo``: entities in the held-out split, disjoint from train.
        queries_per_document: ``demo``: query templates drawn per document.
        corpus: ``corpus``: the passages.
        backend: ``corpus``: the generation backend.
        templates: ``corpus``: template names (exactly those), task types or ``all`` (the templates of that type
            the backend runs: heuristic ones for ``heuristic``, LLM ones otherwise).
        template_dirs: ``corpus``: folders of extra YAML templates (same name = replaces a shipped one).
        brainstorm: ``corpus``: the brainstorm step.
        validation: ``corpus``: checks on generated pairs.
        pairs_per_document: ``corpus``: templates drawn per passage.
        target_languages: ``corpus``: target languages of cross-lingual and bitext templates; empty = the
            corpus's own languages.
        max_per_language: ``corpus``: the most train pairs per language (the paper saw gains level off after a
            few thousand); ``null`` = no cap. The eval split gets the same share of it as of the documents.
        max_per_task: ``corpus``: the most train pairs per task type; ``null`` = no cap.
        eval_fraction: ``corpus``: share of documents held out for the ``eval`` split (by a hash of the id).
        chunk_size: ``corpus``: requests issued between validations and cap checks.
        few_shot: ``corpus``: worked examples from each LLM template's ``examples`` shown before each request (the
            request's language first); helps small local models most. 0 = none.
        cache_dir: ``corpus``: the answer cache; ``null`` = ``$ST_RETROFIT_CACHE/synth``, shared by all runs.
    """

    source: SynthSourceName = Field("demo", description="Where pairs come from.")
    languages: list[str] = Field(default_factory=lambda: list(LANGUAGES), description="Language codes.")
    train_entities: int = Field(120, ge=2, description="Entities in the train split.")
    eval_entities: int = Field(40, ge=2, description="Entities in the held-out split.")
    queries_per_document: int = Field(1, ge=1, le=len(QUERY_KINDS), description="Queries per document.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    templates: list[str] = Field(default_factory=lambda: ["all"], min_length=1, description="Templates or types.")
    template_dirs: list[str] = Field(
        default_factory=list, json_schema_extra={"local_path": True}, description="Folders of extra templates."
    )
    brainstorm: BrainstormConfig = Field(default_factory=BrainstormConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    pairs_per_document: int = Field(1, ge=1, description="Templates drawn per passage.")
    target_languages: list[str] = Field(default_factory=list, description="Cross-lingual targets.")
    max_per_language: int | None = Field(None, ge=1, description="Train pairs per language, at most.")
    max_per_task: int | None = Field(None, ge=1, description="Train pairs per task type, at most.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of documents held out.")
    chunk_size: int = Field(256, ge=1, description="Requests between validations.")
    few_shot: int = Field(0, ge=0, description="Few-shot examples per LLM request.")
    cache_dir: str | None = Field(None, description="Answer cache folder.")

    @model_validator(mode="after")
    def _check_source(self) -> SynthConfig:
        self.source_entry.check(self)
        return self

    @property
    def source_entry(self) -> SynthSourceKind:
        return SYNTH_SOURCES[self.source]

    def check_environment(self) -> None:
        self.source_entry.check_config_environment(self)

    def local_inputs(self) -> list[str]:
        return [path for path in self.source_entry.local_inputs(self) if path]

    def pair_languages(self) -> list[str]:
        return self.source_entry.languages(self)

    def describe(self) -> str:
        return self.source_entry.describe(self)
