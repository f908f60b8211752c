"""Recipe section ``mining``: hard-negative mining with a teacher model, and its nearest-neighbour search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from st_retrofit.config import ConfigError, ConfigModel, keyed, require
from st_retrofit.export.backends import ENCODER_BACKENDS, EncoderBackendName
from st_retrofit.mining.layouts import OUTPUT_LAYOUTS
from st_retrofit.mining.search_backends import SEARCH_BACKENDS

SearchBackendName = SEARCH_BACKENDS.field()
OutputLayoutName = OUTPUT_LAYOUTS.field()


class SearchConfig(ConfigModel):
    """Nearest-neighbour search for mining (recipe section ``mining.search``).

    Args:
        backend: a registered :data:`~st_retrofit.mining.search_backends.SEARCH_BACKENDS` kind: ``exact`` streams
            the corpus through a bounded score block; ``flat``, ``ivf`` and ``hnsw`` are faiss indexes (the
            ``faiss`` extra); ``auto`` is exact while ``queries x corpus <= exact_max_pairs``, IVF beyond.
        memory_mb: exact search: the size of one fp32 score block.
        exact_max_pairs: ``auto``: the largest ``queries x corpus`` searched exactly (100x on GPU).
        nlist: IVF lists; ``null`` takes ``4 * sqrt(corpus)``.
        nprobe: IVF lists visited per query.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW search-time beam width.
        use_gpu: put flat/IVF indexes on the GPU; ``null`` = when faiss sees one.
    """

    not_counts = ConfigModel.not_counts | {"exact_max_pairs"}  # a product of two counts

    backend: SearchBackendName = Field("auto", description="Backend.")
    memory_mb: int = Field(512, ge=1, description="Exact search score block, MiB.")
    exact_max_pairs: int = Field(50_000_000_000, ge=1, description="auto: exact up to this many pairs.")
    nlist: int | None = Field(None, ge=1, description="IVF lists; null = 4 * sqrt(n).")
    nprobe: int = Field(32, ge=1, description="IVF lists probed per query.")
    hnsw_m: int = Field(32, ge=1, description="HNSW degree.")
    ef_construction: int = Field(200, ge=1, description="HNSW build beam.")
    ef_search: int = Field(256, ge=1, description="HNSW search beam.")
    use_gpu: bool | None = Field(None, description="faiss on GPU; null = when available.")


class MiningConfig(ConfigModel):
    """Hard-negative mining with a teacher model (recipe section ``mining``).

    The names follow ``sentence_transformers.util.mine_hard_negatives`` (``range_min``, ``range_max``,
    ``sampling`` for its ``sampling_strategy``); the mixing section uses the same names for the same ideas.

    Args:
        enabled: ``false`` trains on (query, document) pairs with in-batch negatives only.
        teacher: the model that scores candidates; ideally stronger than the student.
        query_prompt: prompt for queries; ``null`` takes the teacher's own ``query`` prompt.
        document_prompt: prompt for documents; ``null`` takes the teacher's ``document``/``passage`` prompt.
        max_seq_length: tokens the teacher reads per text; ``null`` = the teacher's own limit. Encoding is most
            of mining's time and grows with it; the student's ``model.max_seq_length`` makes the teacher's scores
            (the distillation targets) those of texts cut as the student sees them.
        backend: what runs the teacher (:data:`~st_retrofit.export.backends.ENCODER_BACKENDS`): ``torch``, or
            ``onnx`` / ``onnx-int8`` (onnxruntime, the ``onnx`` extra; the graph is exported once and cached).
            int8 encodes faster on CPUs and its vectors differ slightly from fp32's; the cache keeps each backend's
            apart (``benchmarks/mining.py`` measures speed and the overlap of the mined negatives).
        teacher_dtype: the precision the teacher encodes in. ``bfloat16`` halves its memory and, on CPUs with
            bf16 instructions (AVX512-BF16, AMX) and on GPUs, speeds encoding up; the vectors differ slightly, so
            the cache keeps them apart (README "Performance" has the measured agreement and speed).
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
        output: a registered :data:`~st_retrofit.mining.layouts.OUTPUT_LAYOUTS` kind: ``n-tuple``
            (``negative_1..n`` columns) or ``pool`` (a ``negatives`` list of every candidate in range with
            ``negative_ids``, for samplers that draw fresh negatives each epoch).
        pool_size: ``pool``: the most candidates kept per row; ``null`` keeps all in range.
        cross_encoder: a CrossEncoder that rescores the candidates and positives; its scores then drive the
            filters, the ranking and the label column.
        round_trip_top_k: keep a (query, document) pair only when the teacher ranks its document among the ``k``
            best of the group's corpus for its query (round-trip consistency: Promptagator, Dai et al., 2022); it
            drops generated queries that do not single out their document. The kept share per language and
            template is in the report. ``null`` keeps every pair. At most ``range_max``.
        unlabeled_per_language: how many of the synth stage's unlabeled corpus rows per language the teacher also
            encodes (each document, and its opening sentence as a query), for ``train.corpus_distillation``: its
            embeddings of them are what the student learns from texts no template made a pair of. ``0`` (default)
            encodes none, ``null`` all; a cap draws that many per language with the recipe's seed. A corpus source
            writes these rows; the demo source writes none.
        corpus_candidates: draw negatives from every training-side corpus document (the synth stage's unlabeled
            rows), not only from the pairs' documents: harder negatives, and the teacher's scores of them, where the
            templates made pairs of a few documents of each language (the man-page recipe: 80 of ~300-1,000).
        search: nearest-neighbour search settings.
        batch_size: encoding (and cross-encoder) batch size.
        shard_size: queries per output shard; a killed run redoes at most one shard.
        cache_dir: the embedding cache; ``null`` uses ``$ST_RETROFIT_CACHE/embeddings``, shared by all runs.
    """

    enabled: bool = Field(True, description="Mine hard negatives.")
    teacher: str = Field(
        "offline:multilingual-e5-small", json_schema_extra={"local_path": True}, description="Scoring model."
    )
    query_prompt: str | None = Field(None, description="Query prompt; null = the teacher's.")
    document_prompt: str | None = Field(None, description="Document prompt; null = the teacher's.")
    max_seq_length: int | None = Field(None, ge=1, description="Teacher's token limit; null = its own.")
    teacher_dtype: Literal["float32", "bfloat16"] = Field("float32", description="Teacher's precision.")
    backend: EncoderBackendName = Field("torch", description="What runs the teacher: torch, onnx, onnx-int8.")
    num_negatives: int = Field(3, ge=1, description="Negatives per query.")
    range_min: int = Field(0, ge=0, description="Skip this many top candidates.")
    range_max: int | None = Field(None, description="Candidates considered per query.")
    absolute_margin: float | None = Field(None, ge=0, description="Drop above positive - margin.")
    relative_margin: float | None = Field(0.05, ge=0, lt=1, description="False-negative margin in [0, 1).")
    max_positive_ratio: float | None = Field(None, gt=0, le=1, description="TopK-PercPos, in (0, 1].")
    max_score: float | None = Field(None, description="Drop candidates above this score.")
    min_score: float | None = Field(None, description="Drop candidates below this score.")
    sampling: Literal["top", "random"] = Field("top", description="Best or sampled negatives.")
    group_by: str | None = Field("language", description="Scope negatives to a column's groups.")
    output: OutputLayoutName = Field("n-tuple", description="Output layout.")
    pool_size: int | None = Field(None, ge=1, description="pool: candidates kept per row.")
    cross_encoder: str | None = Field(
        None, json_schema_extra={"local_path": True}, description="CrossEncoder for rescoring."
    )
    round_trip_top_k: int | None = Field(None, ge=1, description="Keep pairs whose document ranks in the top k.")
    unlabeled_per_language: int | None = Field(
        0, ge=0, description="Unlabeled corpus rows per language the teacher encodes; 0 = none, null = all."
    )
    corpus_candidates: bool = Field(False, description="Negatives from every corpus document, not only the pairs'.")
    search: SearchConfig = Field(default_factory=SearchConfig)
    batch_size: int = Field(64, ge=1, description="Encoding batch size.")
    shard_size: int = Field(10000, ge=1, description="Queries per output shard.")
    cache_dir: str | None = Field(None, description="Embedding cache folder.")

    @model_validator(mode="after")
    def _check(self) -> MiningConfig:
        require(
            self.range_max is None or self.range_max >= self.range_min + self.num_negatives,
            "range_max",
            f"expected >= range_min + num_negatives = {self.range_min + self.num_negatives}, got {self.range_max}",
        )
        require(
            self.relative_margin is None or self.max_positive_ratio is None,
            "max_positive_ratio",
            "is the same rule as relative_margin (ratio = 1 - margin); set one of them and the other to null",
        )
        require(
            self.max_score is None or self.min_score is None or self.min_score < self.max_score,
            "min_score",
            f"expected below max_score ({self.max_score}), got {self.min_score}",
        )
        require(
            self.teacher_dtype == "float32" or ENCODER_BACKENDS[self.backend].supports_dtype,
            "teacher_dtype",
            f"applies to the torch backend; the {self.backend} backend runs its own graph: set it to float32",
        )
        require(
            self.round_trip_top_k is None or self.round_trip_top_k <= self.resolved_range_max,
            "round_trip_top_k",
            f"expected <= range_max ({self.resolved_range_max}): ranks are counted among the candidates retrieved, "
            f"got {self.round_trip_top_k}",
        )
        return self

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

    def models(self) -> dict[str, str]:
        """The models this section names, by key (teacher and cross-encoder when mining is on)."""
        if not self.enabled:
            return {}
        return {"teacher": self.teacher} | ({"cross_encoder": self.cross_encoder} if self.cross_encoder else {})

    def local_inputs(self) -> list[str]:
        return list(self.models().values())

    def check_environment(self) -> None:
        from st_retrofit.models.resolve import ModelNotFoundError, check_model_name

        if self.enabled:
            with keyed("search.backend"):
                SEARCH_BACKENDS[self.search.backend].check_environment()
            with keyed("backend"):
                ENCODER_BACKENDS[self.backend].check_environment()

        for key, name in self.models().items():
            try:
                check_model_name(name)
            except ModelNotFoundError as exc:
                raise ConfigError(key, str(exc)) from None
