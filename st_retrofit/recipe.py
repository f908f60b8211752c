"""Recipes: typed dataclasses that a YAML file maps onto one to one.

Each top-level YAML section is one dataclass (``model``, ``synth``, ``data``, ``mining``, ``mixing``, ``train``,
``eval``, ``publish``) and its keys are exactly the field names. :func:`load_recipe` rejects unknown keys (with a close
match), wrong types, impossible values, missing files and unknown models before any heavy work, with one line
naming the key:

    mining.relative_margn: unknown key (did you mean relative_margin?)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from st_retrofit.synth.demo import LANGUAGES, QUERY_KINDS


class RecipeError(ValueError):
    """A recipe problem, reported as ``<key path>: <what is wrong and how to fix it>``."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> RecipeError:
        return RecipeError(f"{prefix}.{self.key}" if self.key else prefix, self.message)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise RecipeError(key, message)


@dataclass
class LoraSettings:
    """LoRA adapter settings (recipe section ``model.lora``); the adapter is merged into the weights at export.

    Args:
        r: adapter rank.
        alpha: LoRA scaling numerator (``lora_alpha``).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters (``query``/``key``/``value`` in BERT-style encoders).
    """

    r: int = field(default=16, metadata={"help": "Adapter rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input, in [0, 1)."})
    target_modules: list[str] = field(
        default_factory=lambda: ["query", "key", "value"], metadata={"help": "Linear layers that get adapters."}
    )

    def __post_init__(self) -> None:
        _require(self.r >= 1, "r", f"expected a rank >= 1, got {self.r}")
        _require(self.alpha >= 1, "alpha", f"expected alpha >= 1, got {self.alpha}")
        _require(0 <= self.dropout < 1, "dropout", f"expected a float in [0, 1), got {self.dropout}")
        _require(bool(self.target_modules), "target_modules", "expected at least one module name")


@dataclass
class ModelConfig:
    """The model being retrofitted (recipe section ``model``).

    Args:
        base: ``offline:<name>``, a local folder or a Hub id.
        lora: LoRA settings; ``null`` trains every weight instead.
        max_seq_length: truncation length for training and evaluation; ``null`` keeps the model's own.
    """

    base: str = field(default="offline:multilingual-e5-small", metadata={"help": "Model to retrofit."})
    lora: LoraSettings | None = field(default_factory=LoraSettings, metadata={"help": "null = full fine-tuning."})
    max_seq_length: int | None = field(default=128, metadata={"help": "Token limit; null keeps the model's."})

    def __post_init__(self) -> None:
        _require(
            self.max_seq_length is None or self.max_seq_length >= 8,
            "max_seq_length",
            f"expected an integer >= 8 or null, got {self.max_seq_length}",
        )


@dataclass
class CorpusConfig:
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
        languages: keep only passages in these languages; ``null`` = all.
        max_documents: read at most this many passages (after the language filter; per language, and streamed,
            with a ``{language}`` configuration).
    """

    path: str | None = field(default=None, metadata={"help": "Corpus file, folder or Hub dataset."})
    split: str = field(default="train", metadata={"help": "Split of a folder or Hub dataset."})
    config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    text_column: str = field(default="text", metadata={"help": "Passage text column."})
    title_column: str | None = field(default="title", metadata={"help": "Title column (optional)."})
    language_column: str | None = field(default="language", metadata={"help": "Language column (optional)."})
    id_column: str | None = field(default="id", metadata={"help": "Document id column (optional)."})
    languages: list[str] | None = field(default=None, metadata={"help": "Languages to keep; null = all."})
    max_documents: int | None = field(default=None, metadata={"help": "Read at most this many passages."})

    def __post_init__(self) -> None:
        _require(
            self.max_documents is None or self.max_documents >= 1,
            "max_documents",
            f"expected >= 1 or null, got {self.max_documents}",
        )


@dataclass
class BackendConfig:
    """What writes the pairs (recipe section ``synth.backend``).

    Args:
        type: ``heuristic`` (no LLM: title to body, inverse cloze, cropping, fact templates), ``openai`` (any
            OpenAI-compatible server: OpenAI, vLLM, TGI, llama.cpp, Ollama) or ``transformers`` (a local chat model).
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
        response_format: ``openai``: ``json_object``, ``json_schema`` (structured outputs) or ``none``.
        send_seed: ``openai``: send a per-request seed.
        extra_body: ``openai``: extra request fields for the server.
        gguf_file: ``transformers``: the GGUF file in ``model``.
        device: ``transformers``: ``cuda``, ``cpu``...; ``null`` = CUDA when available.
        dtype: ``transformers``: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        batch_size: ``transformers``: prompts per generation batch.
        prefill_json: ``transformers``: start each answer with the schema's first key, stop when the JSON closes.
    """

    type: Literal["heuristic", "openai", "transformers"] = field(default="heuristic", metadata={"help": "Backend."})
    model: str | None = field(default=None, metadata={"help": "Model name or path."})
    base_url: str | None = field(default=None, metadata={"help": "openai: server URL ending in /v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: env variable with the key."})
    concurrency: int = field(default=8, metadata={"help": "openai: requests in flight."})
    max_retries: int = field(default=6, metadata={"help": "openai: retries per request."})
    timeout: float = field(default=120.0, metadata={"help": "openai: seconds per attempt."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling."})
    max_tokens: int = field(default=1024, metadata={"help": "Longest answer in tokens."})
    response_format: Literal["json_object", "json_schema", "none"] = field(
        default="json_object", metadata={"help": "openai: JSON mode."}
    )
    send_seed: bool = field(default=True, metadata={"help": "openai: per-request seed."})
    extra_body: dict[str, Any] = field(default_factory=dict, metadata={"help": "openai: extra request fields."})
    gguf_file: str | None = field(default=None, metadata={"help": "transformers: GGUF file name."})
    device: str | None = field(default=None, metadata={"help": "transformers: device."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={"help": "dtype."})
    batch_size: int = field(default=8, metadata={"help": "transformers: prompts per batch."})
    prefill_json: bool = field(default=True, metadata={"help": "transformers: prefill the JSON answer."})

    def __post_init__(self) -> None:
        _require(
            self.type != "openai" or bool(self.model),
            "model",
            "the openai backend needs the model name the server serves (e.g. gpt-4o-mini)",
        )
        for key in ("concurrency", "max_tokens", "batch_size"):
            _require(getattr(self, key) >= 1, key, f"expected >= 1, got {getattr(self, key)}")
        _require(self.max_retries >= 0, "max_retries", f"expected >= 0, got {self.max_retries}")
        _require(self.timeout > 0, "timeout", f"expected seconds > 0, got {self.timeout}")
        _require(self.temperature >= 0, "temperature", f"expected >= 0, got {self.temperature}")
        _require(self.top_p is None or 0 < self.top_p <= 1, "top_p", f"expected (0, 1] or null, got {self.top_p}")
        _require(
            not self.api_key_env.startswith(("sk-", "hf_")),
            "api_key_env",
            "expected the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key; never put keys in recipes",
        )


@dataclass
class BrainstormConfig:
    """The brainstorm step (recipe section ``synth.brainstorm``): an LLM invents retrieval tasks first, and each
    request of a template that asks for it gets one of them (Wang et al., 2024).

    Args:
        enabled: run the step for templates that name a brainstorm template.
        rounds: brainstorm calls per template (different seeds; their tasks are pooled).
        tasks_per_round: tasks asked for per call.
    """

    enabled: bool = field(default=True, metadata={"help": "Brainstorm tasks first."})
    rounds: int = field(default=2, metadata={"help": "Calls per template."})
    tasks_per_round: int = field(default=20, metadata={"help": "Tasks per call."})

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "rounds", f"expected >= 1, got {self.rounds}")
        _require(self.tasks_per_round >= 1, "tasks_per_round", f"expected >= 1, got {self.tasks_per_round}")


@dataclass
class ValidationConfig:
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

    check_language: bool = field(default=True, metadata={"help": "Language ID check."})
    language_confidence: float = field(default=0.5, metadata={"help": "Mismatch probability that rejects."})
    check_lengths: bool = field(default=True, metadata={"help": "Template length bounds."})
    deduplicate: bool = field(default=True, metadata={"help": "Drop exact duplicate queries."})
    near_duplicate_threshold: float | None = field(default=0.9, metadata={"help": "MinHash Jaccard threshold."})
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations."})

    def __post_init__(self) -> None:
        _require(
            0 <= self.language_confidence <= 1,
            "language_confidence",
            f"expected a probability in [0, 1], got {self.language_confidence}",
        )
        _require(
            self.near_duplicate_threshold is None or 0 < self.near_duplicate_threshold <= 1,
            "near_duplicate_threshold",
            f"expected (0, 1] or null, got {self.near_duplicate_threshold}",
        )
        _require(self.num_perm >= 16, "num_perm", f"expected >= 16, got {self.num_perm}")


@dataclass
class SynthConfig:
    """Training data synthesis (recipe section ``synth``).

    ``source: demo`` renders the embedded multilingual fact templates (no corpus, no LLM; the quickstart).
    ``source: corpus`` turns the user's passages into pairs with the template library and a backend, validates
    them, and holds out ``eval_fraction`` of the documents as the ``eval`` split.

    Args:
        source: ``demo`` or ``corpus``.
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
        cache_dir: ``corpus``: the answer cache; ``null`` = ``$ST_RETROFIT_CACHE/synth``, shared by all runs.
    """

    source: Literal["demo", "corpus"] = field(default="demo", metadata={"help": "Where pairs come from."})
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES), metadata={"help": "Language codes."})
    train_entities: int = field(default=120, metadata={"help": "Entities in the train split."})
    eval_entities: int = field(default=40, metadata={"help": "Entities in the held-out split."})
    queries_per_document: int = field(default=1, metadata={"help": "Queries per document, 1 to 6."})
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    templates: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "Templates or task types."})
    template_dirs: list[str] = field(default_factory=list, metadata={"help": "Folders of extra templates."})
    brainstorm: BrainstormConfig = field(default_factory=BrainstormConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    pairs_per_document: int = field(default=1, metadata={"help": "Templates drawn per passage."})
    target_languages: list[str] = field(default_factory=list, metadata={"help": "Cross-lingual targets."})
    max_per_language: int | None = field(default=None, metadata={"help": "Train pairs per language, at most."})
    max_per_task: int | None = field(default=None, metadata={"help": "Train pairs per task type, at most."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of documents held out."})
    chunk_size: int = field(default=256, metadata={"help": "Requests between validations."})
    cache_dir: str | None = field(default=None, metadata={"help": "Answer cache folder."})

    def __post_init__(self) -> None:
        if self.source == "demo":
            unknown = [lang for lang in self.languages if lang not in LANGUAGES]
            _require(not unknown, "languages", f"unknown language(s) {unknown}; the demo source has {list(LANGUAGES)}")
            _require(bool(self.languages), "languages", "expected at least one language")
        _require(self.train_entities >= 2, "train_entities", f"expected >= 2, got {self.train_entities}")
        _require(self.eval_entities >= 2, "eval_entities", f"expected >= 2, got {self.eval_entities}")
        _require(
            1 <= self.queries_per_document <= len(QUERY_KINDS),
            "queries_per_document",
            f"expected 1 to {len(QUERY_KINDS)}, got {self.queries_per_document}",
        )
        if self.source == "corpus":
            _require(
                self.corpus.path is not None,
                "corpus.path",
                "source corpus needs a file, a datasets folder or a Hub dataset name",
            )
        _require(bool(self.templates), "templates", "expected at least one template name, task type or all")
        _require(self.pairs_per_document >= 1, "pairs_per_document", f"expected >= 1, got {self.pairs_per_document}")
        for key in ("max_per_language", "max_per_task"):
            value = getattr(self, key)
            _require(value is None or value >= 1, key, f"expected >= 1 or null, got {value}")
        _require(0 <= self.eval_fraction < 1, "eval_fraction", f"expected [0, 1), got {self.eval_fraction}")
        _require(self.chunk_size >= 1, "chunk_size", f"expected >= 1, got {self.chunk_size}")


@dataclass
class DataSourceConfig:
    """One source of training pairs besides the synth stage (an entry of recipe section ``data.sources``).

    Args:
        name: what the rows' ``source`` column says (and their ``task`` unless set), e.g. ``msmarco``.
        path: a Hub dataset (``sentence-transformers/msmarco``), a jsonl/json/parquet/csv/tsv file or a folder
            saved by ``datasets``.
        config_name: the Hub dataset's configuration (subset).
        split: the split to read.
        revision: a Hub commit, tag or branch; pin it for a reproducible run (the manifest records the dataset
            fingerprint either way).
        columns: our column -> the source's column, for ``query``, ``document`` and optionally ``language`` and
            ``task`` (e.g. ``{query: question, document: answer}``).
        language: the language code of every row when no ``language`` column is mapped; ``null`` identifies it
            from the document.
        task: the task of every row when no ``task`` column is mapped; ``null`` = ``name``.
        max_rows: keep a seeded random sample of at most this many rows.
    """

    name: str = field(default="", metadata={"help": "Source name (source and default task column)."})
    path: str = field(default="", metadata={"help": "Hub dataset, file or datasets folder."})
    config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    split: str = field(default="train", metadata={"help": "Split to read."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision to pin."})
    columns: dict[str, str] = field(default_factory=dict, metadata={"help": "Our column -> source column."})
    language: str | None = field(default=None, metadata={"help": "Language of every row."})
    task: str | None = field(default=None, metadata={"help": "Task of every row; null = name."})
    max_rows: int | None = field(default=None, metadata={"help": "Rows kept, at most (seeded sample)."})

    def __post_init__(self) -> None:
        from st_retrofit.data import MAPPABLE

        _require(
            bool(self.name) and "/" not in self.name, "name", f"expected a short name like msmarco, got {self.name!r}"
        )
        _require(bool(self.path), "path", "expected a Hub dataset name, a file or a datasets folder")
        for key, value in self.columns.items():
            close = difflib.get_close_matches(key, MAPPABLE, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _require(key in MAPPABLE, f"columns.{key}", f"not a column we read{hint}; map {', '.join(MAPPABLE)}")
            _require(
                isinstance(value, str) and bool(value), f"columns.{key}", f"expected a column name, got {value!r}"
            )
        _require(
            self.max_rows is None or self.max_rows >= 1, "max_rows", f"expected >= 1 or null, got {self.max_rows}"
        )


@dataclass
class DataConfig:
    """Where the training pairs come from (recipe section ``data``; see :mod:`st_retrofit.data`).

    Args:
        synthetic: train on the synth stage's train split (its ``eval`` split is evaluated either way).
        sources: Hub datasets and local files added to it, each mapped onto ``query``/``document``.
    """

    synthetic: bool = field(default=True, metadata={"help": "Use the synth stage's pairs."})
    sources: list[DataSourceConfig] = field(default_factory=list, metadata={"help": "Extra pair sources."})

    def __post_init__(self) -> None:
        names = [source.name for source in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicates, "sources", f"source names must be unique; repeated: {duplicates}")
        _require(
            "synthetic" not in names, "sources", "'synthetic' names the synth stage's rows; call the source otherwise"
        )
        _require(self.synthetic or bool(self.sources), "synthetic", "false leaves no training pairs; add sources")


@dataclass
class SearchConfig:
    """Nearest-neighbour search for mining (recipe section ``mining.search``).

    Args:
        backend: ``exact`` streams the corpus through a bounded score block; ``flat``, ``ivf`` and ``hnsw`` are
            faiss indexes; ``auto`` is exact while ``queries x corpus <= exact_max_pairs``, IVF beyond.
        memory_mb: exact search: the size of one fp32 score block.
        exact_max_pairs: ``auto``: the largest ``queries x corpus`` searched exactly (100x on GPU).
        nlist: IVF lists; ``null`` takes ``4 * sqrt(corpus)``.
        nprobe: IVF lists visited per query.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW search-time beam width.
        use_gpu: put flat/IVF indexes on the GPU; ``null`` = when faiss sees one.
    """

    backend: Literal["auto", "exact", "flat", "ivf", "hnsw"] = field(default="auto", metadata={"help": "Backend."})
    memory_mb: int = field(default=512, metadata={"help": "Exact search score block, MiB."})
    exact_max_pairs: int = field(default=50_000_000_000, metadata={"help": "auto: exact up to this many pairs."})
    nlist: int | None = field(default=None, metadata={"help": "IVF lists; null = 4 * sqrt(n)."})
    nprobe: int = field(default=32, metadata={"help": "IVF lists probed per query."})
    hnsw_m: int = field(default=32, metadata={"help": "HNSW degree."})
    ef_construction: int = field(default=200, metadata={"help": "HNSW build beam."})
    ef_search: int = field(default=256, metadata={"help": "HNSW search beam."})
    use_gpu: bool | None = field(default=None, metadata={"help": "faiss on GPU; null = when available."})

    def __post_init__(self) -> None:
        for key in ("memory_mb", "exact_max_pairs", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            _require(getattr(self, key) >= 1, key, f"expected >= 1, got {getattr(self, key)}")
        _require(self.nlist is None or self.nlist >= 1, "nlist", f"expected >= 1 or null, got {self.nlist}")


@dataclass
class MiningConfig:
    """Hard-negative mining with a teacher model (recipe section ``mining``).

    Args:
        enabled: ``false`` trains on (query, document) pairs with in-batch negatives only.
        teacher: the model that scores candidates; ideally stronger than the student.
        query_prompt: prompt for queries; ``null`` takes the teacher's own ``query`` prompt.
        document_prompt: prompt for documents; ``null`` takes the teacher's ``document``/``passage`` prompt.
        num_negatives: negatives per row; ``n-tuple`` rows with fewer are dropped (and counted in the report).
        range_min: skip the ``range_min`` best candidates that pass the filters (likely unlabeled positives).
        range_max: candidates retrieved per query besides its positives; ``null`` takes ``range_min +
            10 * num_negatives`` when a score filter is set, else ``range_min + num_negatives`` (as
            ``mine_hard_negatives`` does).
        absolute_margin: drop candidates scoring above ``positive - absolute_margin``.
        relative_margin: drop candidates scoring above ``positive - |positive| * relative_margin``.
        max_positive_ratio: NV-Retriever's TopK-PercPos, e.g. 0.95: keep candidates up to 95% of the positive
            score (the same rule as ``relative_margin: 0.05``; set one of the two).
        max_score: drop candidates scoring above this.
        min_score: drop candidates scoring below this.
        sampling: ``top`` keeps the best candidates; ``random`` samples them (seeded) from the range.
        group_by: draw negatives only from documents sharing this column's value (language, task, source
            dataset); each group becomes its own split. ``null`` = any document.
        output: ``n-tuple`` (``negative_1..n`` columns) or ``pool`` (a ``negatives`` list of every candidate in
            range with ``negative_ids``, for samplers that draw fresh negatives each epoch).
        pool_size: ``pool``: the most candidates kept per row; ``null`` keeps all in range.
        cross_encoder: a CrossEncoder that rescores the candidates and positives; its scores then drive the
            filters, the ranking and the label column.
        search: nearest-neighbour search settings.
        batch_size: encoding (and cross-encoder) batch size.
        shard_size: queries per output shard; a killed run redoes at most one shard.
        cache_dir: the embedding cache; ``null`` uses ``$ST_RETROFIT_CACHE/embeddings``, shared by all runs.
    """

    enabled: bool = field(default=True, metadata={"help": "Mine hard negatives."})
    teacher: str = field(default="offline:multilingual-e5-small", metadata={"help": "Scoring model."})
    query_prompt: str | None = field(default=None, metadata={"help": "Query prompt; null = the teacher's."})
    document_prompt: str | None = field(default=None, metadata={"help": "Document prompt; null = the teacher's."})
    num_negatives: int = field(default=3, metadata={"help": "Negatives per query."})
    range_min: int = field(default=0, metadata={"help": "Skip this many top candidates."})
    range_max: int | None = field(default=None, metadata={"help": "Candidates considered per query."})
    absolute_margin: float | None = field(default=None, metadata={"help": "Drop above positive - margin."})
    relative_margin: float | None = field(default=0.05, metadata={"help": "False-negative margin in [0, 1)."})
    max_positive_ratio: float | None = field(default=None, metadata={"help": "TopK-PercPos, in (0, 1]."})
    max_score: float | None = field(default=None, metadata={"help": "Drop candidates above this score."})
    min_score: float | None = field(default=None, metadata={"help": "Drop candidates below this score."})
    sampling: Literal["top", "random"] = field(default="top", metadata={"help": "Best or sampled negatives."})
    group_by: str | None = field(default="language", metadata={"help": "Scope negatives to a column's groups."})
    output: Literal["n-tuple", "pool"] = field(default="n-tuple", metadata={"help": "Output layout."})
    pool_size: int | None = field(default=None, metadata={"help": "pool: candidates kept per row."})
    cross_encoder: str | None = field(default=None, metadata={"help": "CrossEncoder for rescoring."})
    search: SearchConfig = field(default_factory=SearchConfig)
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    shard_size: int = field(default=10000, metadata={"help": "Queries per output shard."})
    cache_dir: str | None = field(default=None, metadata={"help": "Embedding cache folder."})

    def __post_init__(self) -> None:
        _require(self.num_negatives >= 1, "num_negatives", f"expected >= 1, got {self.num_negatives}")
        _require(self.range_min >= 0, "range_min", f"expected >= 0, got {self.range_min}")
        _require(
            self.range_max is None or self.range_max >= self.range_min + self.num_negatives,
            "range_max",
            f"expected >= range_min + num_negatives = {self.range_min + self.num_negatives}, got {self.range_max}",
        )
        _require(
            self.relative_margin is None or 0 <= self.relative_margin < 1,
            "relative_margin",
            f"expected a float in [0, 1) or null, got {self.relative_margin}",
        )
        _require(
            self.max_positive_ratio is None or 0 < self.max_positive_ratio <= 1,
            "max_positive_ratio",
            f"expected a float in (0, 1] or null, got {self.max_positive_ratio}",
        )
        _require(
            self.relative_margin is None or self.max_positive_ratio is None,
            "max_positive_ratio",
            "is the same rule as relative_margin (ratio = 1 - margin); set one of them and the other to null",
        )
        _require(
            self.absolute_margin is None or self.absolute_margin >= 0,
            "absolute_margin",
            f"expected a float >= 0 or null, got {self.absolute_margin}",
        )
        _require(
            self.max_score is None or self.min_score is None or self.min_score < self.max_score,
            "min_score",
            f"expected below max_score ({self.max_score}), got {self.min_score}",
        )
        _require(self.pool_size is None or self.pool_size >= 1, "pool_size", f"expected >= 1, got {self.pool_size}")
        _require(self.batch_size >= 1, "batch_size", f"expected >= 1, got {self.batch_size}")
        _require(self.shard_size >= 1, "shard_size", f"expected >= 1, got {self.shard_size}")

    @property
    def has_score_filter(self) -> bool:
        return any(
            v is not None
            for v in (self.absolute_margin, self.relative_margin, self.max_positive_ratio, self.max_score)
        ) or (self.cross_encoder is not None and self.min_score is not None)

    @property
    def resolved_range_max(self) -> int:
        if self.range_max is not None:
            return self.range_max
        return self.range_min + self.num_negatives * (10 if self.has_score_filter else 1)


@dataclass
class MixingConfig:
    """How training batches are drawn and collated (recipe section ``mixing``): a
    :class:`~st_retrofit.mixing.TemperatureBatchSampler` and a :class:`~st_retrofit.mixing.RetrofitDataCollator`.

    Each training split (the miner writes one per ``mining.group_by`` value) is a dataset; every batch comes from
    one group.

    Args:
        alpha: mixing exponent: a group's batches are proportional to its size ** alpha (1 = proportional,
            0 = uniform; 0.3 to 0.7 is usual).
        weights: extra multiplier per group name.
        caps: per group name, the most rows its size counts for.
        group_by: what a batch may not mix: ``dataset`` (the splits), a column, or a list of them.
        num_batches: batches per epoch; ``null`` = the (capped) rows over the batch size.
        no_duplicates: keep repeated texts out of a batch (across every text column).
        num_negatives: negatives drawn per row and step from a mined ``pool``; ``null`` = ``mining.num_negatives``.
        rank_min: first pool rank drawn from.
        rank_max: end of the drawn ranks (exclusive); ``null`` = the whole pool.
        sampling: ``uniform``, ``teacher`` (weighted by the teacher's score) or ``top``.
        sampling_temperature: temperature of the teacher weighting.
        prompts: per-task prompts: one string, or ``{task: string | {query: .., document: ..}}``, ``"*"`` = any
            other task; sides without one get the model's own prompts. Saved on the trained model.
        prompt_side: where a string prompt goes: ``query``, ``document`` or ``both``.
        task_column: the column naming each row's task (passed to the loss as task ids); ``null`` = none.
        labels: what the loss receives: ``auto`` (``dict`` for st-retrofit losses, else ``teacher_scores``),
            ``dict``, ``teacher_scores`` or ``none``.
    """

    alpha: float = field(default=0.5, metadata={"help": "Mixing exponent in [0, 1]."})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "Multiplier per group."})
    caps: dict[str, int] = field(default_factory=dict, metadata={"help": "Rows counted per group, at most."})
    group_by: str | list[str] = field(default_factory=lambda: ["dataset"], metadata={"help": "Batch groups."})
    num_batches: int | None = field(default=None, metadata={"help": "Batches per epoch."})
    no_duplicates: bool = field(default=True, metadata={"help": "No repeated text in a batch."})
    num_negatives: int | None = field(default=None, metadata={"help": "Pool negatives drawn per row."})
    rank_min: int = field(default=0, metadata={"help": "First pool rank drawn from."})
    rank_max: int | None = field(default=None, metadata={"help": "End of drawn pool ranks."})
    sampling: Literal["uniform", "teacher", "top"] = field(default="uniform", metadata={"help": "Draw rule."})
    sampling_temperature: float = field(default=0.05, metadata={"help": "Teacher weighting temperature."})
    prompts: str | dict[str, Any] | None = field(default=None, metadata={"help": "Per-task prompts."})
    prompt_side: Literal["query", "document", "both"] = field(default="query", metadata={"help": "Prompt side."})
    task_column: str | None = field(default="task", metadata={"help": "Column naming each row's task."})
    labels: Literal["auto", "dict", "teacher_scores", "none"] = field(default="auto", metadata={"help": "Labels."})

    def __post_init__(self) -> None:
        from st_retrofit.mixing.settings import MixingSettingError, check_collator_settings, check_sampler_settings

        try:
            self.group_by = check_sampler_settings(
                self.alpha, self.weights, self.caps, self.group_by, self.num_batches
            )
            check_collator_settings(
                self.num_negatives if self.num_negatives is not None else 0,
                self.rank_min,
                self.rank_max,
                self.sampling,
                self.sampling_temperature,
                self.prompt_side,
                "dict" if self.labels == "auto" else self.labels,
                self.prompts,
            )
        except MixingSettingError as exc:
            raise RecipeError(exc.key, exc.message) from None


@dataclass
class TrainConfig:
    """Contrastive training through the stock ``SentenceTransformerTrainer`` (recipe section ``train``).

    Args:
        loss: a loss class name from ``st_retrofit.losses`` (``RetrofitInfoNCELoss``, ``CachedRetrofitInfoNCELoss``)
            or ``sentence_transformers.sentence_transformer.losses``. The mined dataset carries the teacher's
            scores as its ``label`` column, which ``RetrofitInfoNCELoss`` uses for teacher masking and distillation.
        loss_kwargs: keyword arguments for the loss (besides the model).
        args: keyword arguments for ``SentenceTransformerTrainingArguments`` (``output_dir`` is set by the run).
    """

    loss: str = field(default="MultipleNegativesRankingLoss", metadata={"help": "Loss class name."})
    loss_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Loss keyword arguments."})
    args: dict[str, Any] = field(default_factory=dict, metadata={"help": "SentenceTransformerTrainingArguments."})


@dataclass
class EvalConfig:
    """Retrieval evaluation of base and retrofitted model on the held-out split (recipe section ``eval``).

    Args:
        k: cut-off for nDCG@k and Recall@k.
        batch_size: encoding batch size.
        mteb_tasks: also evaluate both models with mteb on these: benchmark names (``MTEB(Multilingual, v2)``),
            task names (``MIRACLRetrieval``) or local BEIR-style folders (see :mod:`st_retrofit.mteb_eval`).
        mteb_baselines: ``{label: folder}`` of mteb results of other models, added as columns of the comparison.
    """

    k: int = field(default=10, metadata={"help": "Cut-off for nDCG@k and Recall@k."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    mteb_tasks: list[str] = field(default_factory=list, metadata={"help": "mteb benchmarks, tasks or folders."})
    mteb_baselines: dict[str, str] = field(default_factory=dict, metadata={"help": "Label -> mteb results folder."})

    def __post_init__(self) -> None:
        _require(self.k >= 1, "k", f"expected >= 1, got {self.k}")
        _require(self.batch_size >= 1, "batch_size", f"expected >= 1, got {self.batch_size}")
        for label, folder in self.mteb_baselines.items():
            _require(Path(folder).expanduser().is_dir(), f"mteb_baselines.{label}", f"folder {folder} does not exist")


@dataclass
class PublishConfig:
    """Export and Hub upload (recipe section ``publish``).

    Args:
        repo_id: ``org/name`` on the Hub; needed unless ``dry_run``.
        dry_run: write the folder that would be pushed and stop there.
        private: create the Hub repository as private.
        card_template: a Jinja2 model card template; ``null`` uses the packaged one.
        require_eval: refuse to publish without evaluation results.
    """

    repo_id: str | None = field(default=None, metadata={"help": "Hub repository, org/name."})
    dry_run: bool = field(default=True, metadata={"help": "Only write the folder that would be pushed."})
    private: bool = field(default=True, metadata={"help": "Create the repository as private."})
    card_template: str | None = field(default=None, metadata={"help": "Model card template path."})
    require_eval: bool = field(default=True, metadata={"help": "Refuse to publish without eval results."})

    def __post_init__(self) -> None:
        _require(
            self.dry_run or bool(self.repo_id),
            "repo_id",
            "required when dry_run is false (e.g. repo_id: my-org/retrofit-small)",
        )
        if self.repo_id is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.repo_id)
            except HFValidationError:
                raise RecipeError("repo_id", f"expected org/name, got {self.repo_id!r}") from None


@dataclass
class Recipe:
    """A whole run: synthesize -> mine -> train -> evaluate -> publish.

    Args:
        name: run name; the run folder is ``<output_dir>/<name>``.
        seed: seed for data, mining, sampling and training.
        output_dir: parent folder of run folders.
    """

    name: str = field(default="retrofit", metadata={"help": "Run name."})
    seed: int = field(default=42, metadata={"help": "Global seed."})
    output_dir: str = field(default="runs", metadata={"help": "Parent folder of run folders."})
    model: ModelConfig = field(default_factory=ModelConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "name", f"expected a folder name, got {self.name!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """A short content hash of the named sections plus the seed (used to skip unchanged stages)."""
        payload = {s: getattr(self, s) for s in sections}
        payload["seed"] = self.seed
        text = json.dumps(payload, default=dataclasses.asdict, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Loading and validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except RecipeError as exc:
                # The value had the right shape and failed inside (model.lora.rank): that error is the useful one.
                if exc.key != key or dataclasses.is_dataclass(option):
                    raise
        raise RecipeError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise RecipeError(key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(key, f"expected {_type_name(tp)}, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a mapping of {[f.name for f in dataclasses.fields(tp)]}, got {value!r}")
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any:
        return value
    # bool is an int subclass; `num_negatives: true` must not pass as 1.
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise RecipeError(key, f"expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; valid keys: {', '.join(names)}"
            raise RecipeError(path, f"unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return cls(**kwargs)
    except RecipeError as exc:
        raise exc.under(prefix) if prefix else exc from None


def _set_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise RecipeError("--set", f"expected key.path=value, got {assignment!r}")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(key, f"cannot set a key inside {part}, which is not a mapping")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


def _check_synth(config: SynthConfig) -> None:
    """Templates, backend model and corpus path of ``source: corpus``, without reading the corpus or a model."""
    from st_retrofit.synth import SynthBackendError, SynthSettingError, select_templates
    from st_retrofit.synth.backends import resolve_llm

    try:
        _, templates = select_templates(config)
    except SynthSettingError as exc:
        raise RecipeError(f"synth.{exc.key}", exc.message) from None
    if config.backend.type == "transformers" and any(t.kind == "llm" for t in templates):
        try:
            resolve_llm(config.backend.model or "offline:smollm2-135m-instruct", config.backend.gguf_file)
        except SynthBackendError as exc:
            raise RecipeError("synth.backend.model", str(exc)) from None
    path = config.corpus.path
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        raise RecipeError("synth.corpus.path", f"{path} does not exist")
    from st_retrofit.data import local_columns

    columns = local_columns(path, config.corpus.split)
    if columns is not None and config.corpus.text_column not in columns:
        raise RecipeError(
            "synth.corpus.text_column",
            f"the corpus has no column {config.corpus.text_column!r}; its columns are {columns}",
        )


def _check_environment(recipe: Recipe) -> None:
    """Checks that need the file system, the model resolver or the trainer's argument class."""
    from st_retrofit.models import ModelNotFoundError, check_model_name

    names = [("model.base", recipe.model.base)]
    if recipe.mining.enabled:
        names.append(("mining.teacher", recipe.mining.teacher))
        if recipe.mining.cross_encoder is not None:
            names.append(("mining.cross_encoder", recipe.mining.cross_encoder))
    for key, name in names:
        try:
            check_model_name(name)
        except ModelNotFoundError as exc:
            raise RecipeError(key, str(exc)) from None

    if recipe.synth.source == "corpus":
        _check_synth(recipe.synth)
    from st_retrofit.data import DataSourceError, check_source_columns

    for i, source in enumerate(recipe.data.sources):
        if source.path.startswith((".", "/", "~")) and not Path(source.path).expanduser().exists():
            raise RecipeError(f"data.sources[{i}].path", f"{source.path} does not exist")
        try:
            check_source_columns(source)
        except DataSourceError as exc:
            raise RecipeError(f"data.sources[{i}].{exc.key}", exc.message) from None

    if recipe.eval.mteb_tasks:
        from st_retrofit.mteb_eval import MtebTaskError, resolve_tasks

        for i, spec in enumerate(recipe.eval.mteb_tasks):
            try:
                resolve_tasks([spec])
            except MtebTaskError as exc:
                raise RecipeError(f"eval.mteb_tasks[{i}]", str(exc)) from None

    if recipe.publish.card_template is not None and not Path(recipe.publish.card_template).is_file():
        raise RecipeError("publish.card_template", f"file {recipe.publish.card_template} does not exist")

    from st_retrofit.train import resolve_loss_class, training_arguments

    try:
        loss_class = resolve_loss_class(recipe.train.loss)
    except ValueError as exc:
        raise RecipeError("train.loss", str(exc)) from None
    import inspect

    accepted = [name for name in inspect.signature(loss_class).parameters if name != "model"]
    for key in recipe.train.loss_kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; it takes {', '.join(accepted)}"
            raise RecipeError(f"train.loss_kwargs.{key}", f"not an argument of {recipe.train.loss}{hint}")
    training_arguments(recipe, output_dir=str(recipe.run_dir / "train" / "checkpoints"), validating=True)


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, check: bool = True) -> Recipe:
    """Build and validate a :class:`Recipe` from a mapping; ``overrides`` are ``key.path=value`` strings."""
    if not isinstance(data, dict):
        raise RecipeError("", f"a recipe must be a mapping of sections, got {type(data).__name__}")
    data = json.loads(json.dumps(data))  # deep copy; overrides must not touch the caller's mapping
    for assignment in overrides or []:
        _set_override(data, assignment)
    recipe = _build(Recipe, data, "")
    if check:
        _check_environment(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, check: bool = True) -> Recipe:
    """Read a YAML recipe and validate it completely (see the module docstring).

    Raises:
        RecipeError: naming the key (or the file) and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError("recipe", f"file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError("recipe", f"{path} is not valid YAML: {exc}") from None
    return recipe_from_dict(data, overrides, check=check)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
