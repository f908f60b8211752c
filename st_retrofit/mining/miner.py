"""The hard-negative miner: teacher-scored, positive-aware, scoped, cached, sharded and resumable.

Relations: ``sentence_transformers.util.mine_hard_negatives`` does the same job in one call. This miner keeps its
parameter names and its ranking rules (retrieve ``range_max + max positives``, mask positives, filter, skip
``range_min``, keep ``num_negatives``) and adds what long runs need:

- embeddings come from a content-addressed fp16 cache keyed on the teacher's weights (:mod:`.cache`), so only
  texts never seen before are encoded, and they are encoded in token-length order;
- search holds one bounded score block, or a faiss IVF/HNSW index (:mod:`.index`), never ``queries x corpus``;
- positives, duplicates of a positive or of the query, and repeated candidates are excluded after text
  normalization; TopK-PercPos joins the margins (:mod:`.filters`);
- negatives can be scoped to a group (language, task, source), and each group becomes its own split;
- a cross-encoder, when given, always rescores (the built-in ignores it unless a margin or score bound is set);
- queries are processed in shards written to disk, so a killed run continues where it stopped and produces the
  same result; sampling uses one seeded generator per query, never the global ``random``;
- a report records the teacher (with its weights fingerprint) and settings, what each rule removed, the rows short
  of negatives, and score distributions (:mod:`.report`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from st_retrofit.mining.cache import EmbeddingCache, Role, model_fingerprint
from st_retrofit.mining.filters import NegativeFilter, duplicate_keys, exclusion_masks
from st_retrofit.mining.layouts import OUTPUT_LAYOUTS, POOL_COLUMN, negative_columns
from st_retrofit.mining.report import build_report
from st_retrofit.mining.search_backends import build_searcher

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from st_retrofit.mining.config import MiningConfig
    from st_retrofit.mining.layouts import OutputLayout

from st_retrofit.files import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

QUERY_COLUMN, DOCUMENT_COLUMN, LABEL_COLUMN = "query", "document", "label"
ROW_COLUMN = "_row"
# Input columns each output row carries over from its pair: the task (per-task prompts and task ids in training).
CARRIED_COLUMNS = ("task",)


def round_trip_report(pairs: Dataset, dropped_rows: list[int], top_k: int) -> dict[str, Any]:
    """How many pairs round-trip filtering kept: in all, and per value of the ``language``, ``query_language`` and
    ``template`` columns the pairs have (share kept of each)."""
    dropped = np.zeros(len(pairs), dtype=bool)
    dropped[dropped_rows] = True
    report: dict[str, Any] = {"top_k": top_k, "kept": int((~dropped).sum()), "dropped": int(dropped.sum())}
    for column in ("language", "query_language", "template"):
        if column not in pairs.column_names:
            continue
        values = np.asarray(pairs[column], dtype=object)
        report[f"kept_share_by_{column}"] = {
            str(value): round(float((~dropped[values == value]).mean()), 4) for value in sorted(set(values))
        }
    return report


@dataclass
class MiningResult:
    """What :meth:`HardNegativeMiner.mine` returns.

    Args:
        dataset: one split per group (``all`` without ``group_by``). ``n-tuple``: ``query``, ``document``,
            ``negative_1..n``, ``label`` (scores of the positive and each negative). ``pool``: ``query``,
            ``document``, ``negatives`` (best first), ``negative_ids`` (rows of ``corpus``), ``label``.
        corpus: the deduplicated corpus (``text``), which ``negative_ids`` index.
        report: settings, counts and score statistics (see :func:`~st_retrofit.mining.report.build_report`).
    """

    dataset: DatasetDict
    corpus: Dataset
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    """The input, indexed: unique query texts, the corpus, and query units (one per query text and group)."""

    query_texts: list[str]
    corpus_texts: list[str]
    group_names: list[str]
    group_corpus: list[np.ndarray]  # corpus ids per group
    group_units: list[np.ndarray]  # unit ids per group
    unit_query: np.ndarray  # query text id per unit
    unit_positives: list[list[int]]  # corpus ids per unit
    unit_rows: list[list[int]]  # input rows per unit
    row_positive: np.ndarray  # corpus id of each input row's document


def _split_name(value: Any, taken: set[str]) -> str:
    name = re.sub(r"\W+", "_", str(value)).strip("_") or "group"
    base, i = name, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-shard "Creating parquet" bars from datasets; the miner shows its own."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _check_texts(values: list[Any], column: str) -> None:
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"mining: column {column!r} row {i} is {value!r}; expected a non-empty string")


def _pair_scores(queries: np.ndarray, ids: np.ndarray, table, missing: float, block: int = 1024) -> np.ndarray:
    """``queries[i] . table[ids[i, j]]`` for every valid id (``missing`` where ``ids < 0``), row by row."""
    out = np.full(ids.shape, missing, dtype=np.float32)
    for start in range(0, len(ids), block):
        chunk = ids[start : start + block]
        rows, cols = np.nonzero(chunk >= 0)
        vectors = table.take(chunk[rows, cols]).astype(np.float32)
        out[start + rows, cols] = np.sum(queries[start + rows] * vectors, axis=1)
    return out


class HardNegativeMiner:
    """Mine hard negatives for (query, document) pairs with a teacher model.

    Args:
        teacher: the model whose embeddings rank candidates; keep it separate from (and stronger than) the student.
        config: the recipe's ``mining`` section (:class:`~st_retrofit.recipe.MiningConfig`); every setting is
            there, so a Python run and a recipe run of the same settings give the same result.
        seed: seeds the ``random`` sampling strategy and IVF training.
        cross_encoder: rescoring model; when given, its scores replace the teacher's for every rule.
        cache_dir: the embedding cache root (default ``config.cache_dir``, else ``$ST_RETROFIT_CACHE/embeddings``).
        teacher_name: how the report names the teacher (the recipe's ``mining.teacher``).
        cross_encoder_name: how the report names the cross-encoder.
        show_progress_bar: tqdm bars for encoding and shards.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from st_retrofit.mining import HardNegativeMiner
            from st_retrofit.mining.config import MiningConfig

            teacher = SentenceTransformer("intfloat/multilingual-e5-large")
            miner = HardNegativeMiner(teacher, MiningConfig(num_negatives=7, max_positive_ratio=0.95,
                                                            relative_margin=None, group_by="language"))
            result = miner.mine(pairs, output_dir="mined/")  # rerun after a kill: it continues
            result.dataset["de"][0]  # {"query", "document", "negative_1", ..., "label": [pos, neg_1, ...]}
    """

    def __init__(
        self,
        teacher: SentenceTransformer,
        config: MiningConfig,
        seed: int = 0,
        cross_encoder: CrossEncoder | None = None,
        cache_dir: str | Path | None = None,
        teacher_name: str | None = None,
        cross_encoder_name: str | None = None,
        show_progress_bar: bool = True,
    ) -> None:
        from st_retrofit.models.resolve import cache_dir as default_cache_dir

        self.teacher, self.config, self.seed, self.cross_encoder = teacher, config, seed, cross_encoder
        self.cache_root = Path(cache_dir or config.cache_dir or default_cache_dir() / "embeddings").expanduser()
        self.teacher_name = teacher_name or str(getattr(teacher.model_card_data, "base_model", None) or "teacher")
        self.cross_encoder_name = cross_encoder_name
        self.show_progress_bar = show_progress_bar
        self.filter = NegativeFilter(
            absolute_margin=config.absolute_margin,
            relative_margin=config.relative_margin,
            max_positive_ratio=config.max_positive_ratio,
            max_score=config.max_score,
            min_score=config.min_score,
        )

    @functools.cached_property
    def teacher_fingerprint(self) -> str:
        # A hash of every weight: seconds for a 300M teacher, so once per miner.
        return model_fingerprint(self.teacher)

    def encode(self, texts: Sequence[str], role: Role) -> EmbeddingCache:
        """Encode ``texts`` with the teacher in ``role`` (its prompt for it), only those it never encoded before,
        into the cache namespace mining uses, so that :class:`~st_retrofit.mining.cache.TeacherEmbeddings` finds them
        from the mining report: texts the student learns from without a pair (``mining.unlabeled_per_language``)."""
        prompt = self.config.query_prompt if role == "query" else self.config.document_prompt
        cache = EmbeddingCache(self.cache_root, self.teacher, role, prompt, self.teacher_fingerprint)
        cache.encode(texts, self.config.batch_size, self.show_progress_bar)
        return cache

    # -- planning ----------------------------------------------------------------------------------------------
    def _plan(self, pairs: Dataset, corpus: Dataset | Sequence[str] | None) -> _Plan:
        cfg = self.config
        for column in (QUERY_COLUMN, DOCUMENT_COLUMN) + ((cfg.group_by,) if cfg.group_by else ()):
            if column not in pairs.column_names:
                raise ValueError(
                    f"mining: the pairs have no column {column!r} (columns: {pairs.column_names}); "
                    + ("set mining.group_by to one of them or null" if column == cfg.group_by else "rename yours")
                )
        queries, documents = list(pairs[QUERY_COLUMN]), list(pairs[DOCUMENT_COLUMN])
        _check_texts(queries, QUERY_COLUMN)
        _check_texts(documents, DOCUMENT_COLUMN)
        groups = list(pairs[cfg.group_by]) if cfg.group_by else [None] * len(pairs)

        extra_texts, extra_groups = [], []
        if corpus is not None:
            if isinstance(corpus, Sequence) and not hasattr(corpus, "column_names"):
                if cfg.group_by:
                    raise ValueError(
                        f"mining: group_by={cfg.group_by!r} needs the corpus as a Dataset with a "
                        f"{cfg.group_by!r} column, got a plain list of texts"
                    )
                extra_texts, extra_groups = list(corpus), [None] * len(corpus)
            else:
                for column in ("text",) + ((cfg.group_by,) if cfg.group_by else ()):
                    if column not in corpus.column_names:
                        raise ValueError(f"mining: the corpus has no column {column!r} ({corpus.column_names})")
                extra_texts = list(corpus["text"])
                extra_groups = list(corpus[cfg.group_by]) if cfg.group_by else [None] * len(extra_texts)
            _check_texts(extra_texts, "corpus.text")

        corpus_ids: dict[str, int] = {}
        for text in documents + extra_texts:
            corpus_ids.setdefault(text, len(corpus_ids))
        group_index: dict[Any, int] = {}
        for g in groups:
            group_index.setdefault(g, len(group_index))
        members: list[set[int]] = [set() for _ in group_index]
        for text, g in zip(documents, groups, strict=True):
            members[group_index[g]].add(corpus_ids[text])
        for text, g in zip(extra_texts, extra_groups, strict=True):
            if g in group_index:  # corpus texts of groups without queries can never be negatives
                members[group_index[g]].add(corpus_ids[text])

        query_ids: dict[str, int] = {}
        units: dict[tuple[int, int], int] = {}
        unit_query, unit_positives, unit_rows, unit_group = [], [], [], []
        row_positive = np.empty(len(queries), dtype=np.int64)
        for row, (query, document, g) in enumerate(zip(queries, documents, groups, strict=True)):
            qid = query_ids.setdefault(query, len(query_ids))
            key = (group_index[g], qid)
            unit = units.get(key)
            if unit is None:
                unit = units[key] = len(unit_query)
                unit_query.append(qid)
                unit_positives.append([])
                unit_rows.append([])
                unit_group.append(key[0])
            pid = corpus_ids[document]
            row_positive[row] = pid
            if pid not in unit_positives[unit]:
                unit_positives[unit].append(pid)
            unit_rows[unit].append(row)
        unit_group_arr = np.asarray(unit_group, dtype=np.int64)
        taken: set[str] = set()
        names = [_split_name(g, taken) if g is not None else "all" for g in group_index]
        return _Plan(
            query_texts=list(query_ids),
            corpus_texts=list(corpus_ids),
            group_names=names,
            group_corpus=[np.array(sorted(m), dtype=np.int64) for m in members],
            group_units=[np.flatnonzero(unit_group_arr == i) for i in range(len(group_index))],
            unit_query=np.asarray(unit_query, dtype=np.int64),
            unit_positives=unit_positives,
            unit_rows=unit_rows,
            row_positive=row_positive,
        )

    def _run_fingerprint(self, plan: _Plan, teacher_fp: str, ce_fp: str | None) -> str:
        digest = hashlib.blake2b(digest_size=16)
        settings = self.config.model_dump(mode="json")
        settings.pop("cache_dir")
        settings.pop("shard_size")  # checked on its own: shards of another size cannot be reused
        digest.update(json.dumps([settings, self.seed, teacher_fp, ce_fp, plan.group_names], sort_keys=True).encode())
        for texts in (plan.query_texts, plan.corpus_texts):
            for text in texts:
                digest.update(text.encode())
                digest.update(b"\0")
        digest.update(plan.row_positive.tobytes())
        digest.update(plan.unit_query.tobytes())
        for members in plan.group_corpus:
            digest.update(members.tobytes())
        return digest.hexdigest()

    # -- mining ------------------------------------------------------------------------------------------------
    def mine(
        self,
        pairs: Dataset,
        corpus: Dataset | Sequence[str] | None = None,
        output_dir: str | Path | None = None,
    ) -> MiningResult:
        """Mine negatives for every row of ``pairs``.

        Args:
            pairs: ``query`` and ``document`` columns (a query on several rows has several positives), plus the
                ``group_by`` column when set. A ``task`` column is carried over to the output rows.
            corpus: extra candidate documents: a list of texts, or a Dataset with ``text`` (and the ``group_by``
                column); the pairs' documents are always candidates.
            output_dir: where shards, the state and the faiss indexes go; a rerun with the same inputs and
                settings continues from the finished shards. ``None`` mines in a temporary folder.

        Returns:
            A :class:`MiningResult`.
        """
        with _quiet_datasets():
            if output_dir is None:
                with tempfile.TemporaryDirectory(prefix="st-retrofit-mine-") as tmp:
                    return self._mine(pairs, corpus, Path(tmp))
            return self._mine(pairs, corpus, Path(output_dir))

    def _mine(self, pairs: Dataset, corpus: Dataset | Sequence[str] | None, work: Path) -> MiningResult:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from datasets import Dataset, DatasetDict

        cfg, timings = self.config, {}
        started = time.perf_counter()
        plan = self._plan(pairs, corpus)
        fingerprint = self.teacher_fingerprint
        ce_fingerprint = model_fingerprint(self.cross_encoder) if self.cross_encoder is not None else None
        timings["plan_s"] = time.perf_counter() - started

        # 1. Embeddings: everything not cached yet is encoded (and committed) first.
        t = time.perf_counter()
        query_cache = EmbeddingCache(self.cache_root, self.teacher, "query", cfg.query_prompt, fingerprint)
        doc_cache = EmbeddingCache(self.cache_root, self.teacher, "document", cfg.document_prompt, fingerprint)
        query_table = query_cache.encode(plan.query_texts, cfg.batch_size, self.show_progress_bar)
        corpus_table = doc_cache.encode(plan.corpus_texts, cfg.batch_size, self.show_progress_bar)
        timings["encode_s"] = time.perf_counter() - t

        # 2. Shards: reuse the finished ones when nothing that decides them changed.
        run_fp = self._run_fingerprint(plan, fingerprint, ce_fingerprint)
        state_path, shard_dir = work / "state.json", work / "shards"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if state.get("fingerprint") != run_fp or state.get("shard_size") != cfg.shard_size:
            if state:
                logger.warning("Mining inputs or settings changed since the last run in %s; starting over", work)
            shutil.rmtree(shard_dir, ignore_errors=True)
            shutil.rmtree(work / "index", ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps({"fingerprint": run_fp, "shard_size": cfg.shard_size}))
        shard_dir.mkdir(parents=True, exist_ok=True)

        corpus_keys = duplicate_keys(plan.corpus_texts)
        query_keys = duplicate_keys(plan.query_texts)
        t = time.perf_counter()
        backends, resumed = {}, 0
        total_shards = sum(-(-len(u) // cfg.shard_size) for u in plan.group_units)
        progress = tqdm(total=total_shards, desc="Mining shards", disable=not self.show_progress_bar)
        for g, (name, members, units) in enumerate(
            zip(plan.group_names, plan.group_corpus, plan.group_units, strict=True)
        ):
            shard_starts = list(range(0, len(units), cfg.shard_size))
            todo = [s for s in shard_starts if not (shard_dir / f"{g:05d}-{s // cfg.shard_size:06d}.json").exists()]
            resumed += len(shard_starts) - len(todo)
            progress.update(len(shard_starts) - len(todo))
            if not todo:
                continue
            searcher, backends[name] = build_searcher(
                corpus_table.subset(members), cfg.search, len(units), self.seed, work / "index" / f"{g:05d}.faiss"
            )
            for start in todo:
                shard_units = units[start : start + cfg.shard_size]
                columns, stats = self._mine_shard(
                    plan, shard_units, members, searcher, query_table, corpus_table, corpus_keys, query_keys
                )
                self._write_shard(shard_dir / f"{g:05d}-{start // cfg.shard_size:06d}", columns, stats)
                progress.update(1)
        progress.close()
        timings["search_and_filter_s"] = time.perf_counter() - t

        # 3. Assemble the splits in input order.
        t = time.perf_counter()
        splits, shard_stats = {}, []
        carried = {c: pairs[c] for c in CARRIED_COLUMNS if c in pairs.column_names}
        for g, name in enumerate(plan.group_names):
            paths = sorted(shard_dir.glob(f"{g:05d}-*.parquet"))
            shard_stats += [json.loads(p.with_suffix(".json").read_text()) for p in paths]
            tables = [pq.read_table(p) for p in paths]
            tables = [table for table in tables if table.num_rows]
            if not tables:
                continue
            table = pa.concat_tables(tables)
            table = table.take(np.argsort(table.column(ROW_COLUMN).to_numpy(), kind="stable"))
            rows = table.column(ROW_COLUMN).to_numpy()
            table = table.drop([ROW_COLUMN])
            for column, values in carried.items():
                table = table.append_column(column, pa.array([values[r] for r in rows]))
            splits[name] = Dataset(table)
        dataset = DatasetDict(splits)
        corpus_ds = Dataset.from_dict({"text": plan.corpus_texts})
        timings["assemble_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - started

        report = build_report(
            dataset=dataset,
            shard_stats=shard_stats,
            config=cfg,
            seed=self.seed,
            teacher={
                "name": self.teacher_name,
                "fingerprint": fingerprint,
                "max_seq_length": getattr(self.teacher, "max_seq_length", None),
                "backend": query_cache.backend,
                "embedding_dim": query_table.dim,
                "query_prompt": query_cache.prompt,
                "document_prompt": doc_cache.prompt,
                "similarity": "cosine (normalized embeddings)",
            },
            cross_encoder=(
                {"name": self.cross_encoder_name or type(self.cross_encoder).__name__, "fingerprint": ce_fingerprint}
                if self.cross_encoder is not None
                else None
            ),
            plan={
                "rows_in": len(pairs),
                "unique_queries": len(plan.query_texts),
                "corpus": len(plan.corpus_texts),
                "groups": {
                    name: {"queries": len(u), "corpus": len(m), "search": backends.get(name, "resumed")}
                    for name, u, m in zip(plan.group_names, plan.group_units, plan.group_corpus, strict=True)
                },
            },
            cache={
                "folder": str(self.cache_root),
                "encoded": query_cache.encoded + doc_cache.encoded,
                "reused": query_cache.reused + doc_cache.reused,
                # Where the teacher's embeddings of this run's texts are: TeacherEmbeddings reads them in training.
                "query_namespace": str(query_cache.folder),
                "document_namespace": str(doc_cache.folder),
            },
            shards={"total": total_shards, "resumed": resumed},
            timings=timings,
        )
        if cfg.round_trip_top_k is not None:
            dropped = [row for stats in shard_stats for row in stats.get("round_trip_dropped", [])]
            report["round_trip"] = round_trip_report(pairs, dropped, cfg.round_trip_top_k)
        logger.info(
            "Mined %d of %d rows (%d encoded, %d from cache)",
            report["rows_out"],
            len(pairs),
            report["cache"]["encoded"],
            report["cache"]["reused"],
        )
        return MiningResult(dataset=dataset, corpus=corpus_ds, report=report)

    def _mine_shard(
        self,
        plan: _Plan,
        shard_units: np.ndarray,
        members: np.ndarray,
        searcher,
        query_table,
        corpus_table,
        corpus_keys: np.ndarray,
        query_keys: np.ndarray,
    ) -> tuple[dict[str, list], dict[str, Any]]:
        cfg = self.config
        range_max = cfg.resolved_range_max
        n = len(shard_units)
        max_pos = max(len(plan.unit_positives[u]) for u in shard_units)
        positives = np.full((n, max_pos), -1, dtype=np.int64)
        for i, u in enumerate(shard_units):
            positives[i, : len(plan.unit_positives[u])] = plan.unit_positives[u]

        query_emb = query_table.take(plan.unit_query[shard_units]).astype(np.float32)
        _, local = searcher.search(query_emb, range_max + max_pos)
        ids = np.where(local >= 0, members[np.maximum(local, 0)], -1)
        # Every (query, candidate) and (query, positive) score is recomputed pair by pair: a matrix product's
        # rounding depends on the block shape, which must not decide near-ties between shard sizes or backends.
        scores = _pair_scores(query_emb, ids, corpus_table, missing=-np.inf)
        pos_scores = _pair_scores(query_emb, positives, corpus_table, missing=np.nan)

        excluded = exclusion_masks(ids, positives, corpus_keys, query_keys[plan.unit_query[shard_units]])
        eligible = ~(excluded["missing"] | excluded["positive"] | excluded["duplicate"])
        scores = np.where(eligible, scores, -np.inf).astype(np.float32)
        # The teacher's rank of each positive among the other documents: how many score above it.
        positive_rank = (scores[:, None, :] > pos_scores[:, :, None]).sum(axis=2)
        stats: dict[str, Any] = {
            "queries": n,
            "retrieved": int((~excluded["missing"]).sum()),
            "excluded": {"positive": int(excluded["positive"].sum()), "duplicate": int(excluded["duplicate"].sum())},
        }

        if self.cross_encoder is not None:
            scores, ids, pos_scores = self._rescore(plan, shard_units, scores, ids, positives, range_max)

        min_positive = np.nanmin(pos_scores, axis=1)
        keep, removed = self.filter.apply(scores, min_positive)
        stats["removed"] = removed
        scores = np.where(keep, scores, -np.inf)
        # Eligible candidates first, best first (ties by id), then the range: at most range_max, minus range_min.
        order = np.lexsort((ids, -scores), axis=1)
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        scores, ids = scores[:, cfg.range_min : range_max], ids[:, cfg.range_min : range_max]
        available = np.isfinite(scores).sum(1)

        layout = OUTPUT_LAYOUTS[cfg.output]
        columns: dict[str, list] = {QUERY_COLUMN: [], DOCUMENT_COLUMN: []}
        columns.update({c: [] for c in layout.columns(cfg)})
        columns.update({LABEL_COLUMN: [], ROW_COLUMN: []})
        short_rows, round_trip_dropped = 0, []
        for i, u in enumerate(shard_units):
            chosen = self._select(layout, int(u), int(available[i]))
            if len(chosen) < cfg.num_negatives:
                short_rows += len(plan.unit_rows[u])
                if not layout.keeps_short_rows:
                    continue
            neg_ids, neg_scores = ids[i, chosen].tolist(), scores[i, chosen].tolist()
            neg_texts = [plan.corpus_texts[j] for j in neg_ids]
            query = plan.query_texts[plan.unit_query[u]]
            for row in plan.unit_rows[u]:
                positive = int(plan.row_positive[row])
                slot = plan.unit_positives[u].index(positive)
                if cfg.round_trip_top_k is not None and positive_rank[i, slot] >= cfg.round_trip_top_k:
                    round_trip_dropped.append(int(row))
                    continue
                columns[QUERY_COLUMN].append(query)
                columns[DOCUMENT_COLUMN].append(plan.corpus_texts[positive])
                columns[ROW_COLUMN].append(row)
                columns[LABEL_COLUMN].append([float(pos_scores[i, slot])] + neg_scores)
                layout.add(columns, cfg, neg_texts, neg_ids)
        stats["rows"] = sum(len(plan.unit_rows[u]) for u in shard_units)
        stats["rows_short"] = short_rows
        stats["round_trip_dropped"] = round_trip_dropped
        stats["available"] = np.bincount(
            np.minimum(available, cfg.num_negatives), minlength=cfg.num_negatives + 1
        ).tolist()
        return columns, stats

    def _select(self, layout: OutputLayout, unit: int, available: int) -> list[int]:
        """Positions (within the range) of the negatives kept for one query unit."""
        cfg = self.config
        kept = layout.kept(cfg, available)
        if kept is not None:
            return list(range(kept))
        if cfg.sampling == "top" or available <= cfg.num_negatives:
            return list(range(min(available, cfg.num_negatives)))
        # One generator per query: the choice does not depend on shard layout, order or what ran before.
        rng = np.random.default_rng([self.seed, unit])
        return sorted(rng.choice(available, size=cfg.num_negatives, replace=False).tolist())

    def _rescore(
        self,
        plan: _Plan,
        shard_units: np.ndarray,
        scores: np.ndarray,
        ids: np.ndarray,
        positives: np.ndarray,
        range_max: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cross-encoder scores for the best ``range_max`` eligible candidates and for every positive."""
        order = np.lexsort((ids, -scores), axis=1)[:, :range_max]
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        eligible = np.isfinite(scores)
        queries = [plan.query_texts[q] for q in plan.unit_query[shard_units]]
        rows, cols = np.nonzero(eligible)
        pos_rows, pos_cols = np.nonzero(positives >= 0)
        pairs = [(queries[r], plan.corpus_texts[ids[r, c]]) for r, c in zip(rows, cols, strict=True)]
        pairs += [(queries[r], plan.corpus_texts[positives[r, c]]) for r, c in zip(pos_rows, pos_cols, strict=True)]
        predicted = np.asarray(
            self.cross_encoder.predict(
                pairs, batch_size=self.config.batch_size, show_progress_bar=False, convert_to_numpy=True
            ),
            dtype=np.float32,
        ).reshape(len(pairs))
        new_scores = np.full(scores.shape, -np.inf, dtype=np.float32)
        new_scores[rows, cols] = predicted[: len(rows)]
        pos_scores = np.full(positives.shape, np.nan, dtype=np.float32)
        pos_scores[pos_rows, pos_cols] = predicted[len(rows) :]
        return new_scores, ids, pos_scores

    @staticmethod
    def _write_shard(stem: Path, columns: dict[str, list], stats: dict[str, Any]) -> None:
        """Data, then the stats file that marks the shard finished; both atomically."""
        from datasets import Dataset

        with atomic_path(stem.with_suffix(".parquet")) as tmp:
            Dataset.from_dict(columns).to_parquet(str(tmp))
        atomic_write_text(stem.with_suffix(".json"), json.dumps(stats))


def mine_negatives(
    pairs: Dataset,
    teacher: SentenceTransformer,
    config: MiningConfig,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    corpus: Dataset | Sequence[str] | None = None,
    cross_encoder: CrossEncoder | None = None,
    output_dir: str | Path | None = None,
    cache_folder: str | Path | None = None,
) -> tuple[DatasetDict, dict[str, Any]]:
    """One-call form of :class:`HardNegativeMiner`: returns the mined splits and the report.

    ``cache_folder`` is the pre-0.2 name of ``cache_dir`` (the miner's and the recipe's name); it still works, with
    a warning, for one release.
    """
    if cache_folder is not None:
        warnings.warn("mine_negatives(cache_folder=) is now cache_dir=", FutureWarning, stacklevel=2)
        cache_dir = cache_dir or cache_folder
    miner = HardNegativeMiner(teacher, config, seed=seed, cross_encoder=cross_encoder, cache_dir=cache_dir)
    result = miner.mine(pairs, corpus=corpus, output_dir=output_dir)
    return result.dataset, result.report


def pool_to_ntuple(dataset: Dataset, num_negatives: int) -> Dataset:
    """Turn a ``pool`` split into ``n-tuple`` form with the ``num_negatives`` best candidates of each pool (rows
    with fewer are dropped), for trainers without a pool-aware collator."""
    short = [i for i, pool in enumerate(dataset[POOL_COLUMN]) if len(pool) < num_negatives]
    if short:
        logger.info("pool_to_ntuple: dropping %d rows with fewer than %d candidates", len(short), num_negatives)
        dataset = dataset.select(sorted(set(range(len(dataset))) - set(short)))

    def to_columns(batch: dict[str, list]) -> dict[str, list]:
        out = {QUERY_COLUMN: batch[QUERY_COLUMN], DOCUMENT_COLUMN: batch[DOCUMENT_COLUMN]}
        for i, column in enumerate(negative_columns(num_negatives)):
            out[column] = [pool[i] for pool in batch[POOL_COLUMN]]
        out[LABEL_COLUMN] = [label[: num_negatives + 1] for label in batch[LABEL_COLUMN]]
        return out

    columns = [QUERY_COLUMN, DOCUMENT_COLUMN, *negative_columns(num_negatives), LABEL_COLUMN]
    return dataset.map(to_columns, batched=True, remove_columns=dataset.column_names).select_columns(columns)
