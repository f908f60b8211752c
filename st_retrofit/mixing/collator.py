"""A data collator that samples hard negatives from mined pools at every step and applies per-task prompts."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from st_retrofit.mixing.settings import (
    DATASET_NAME_COLUMN,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    check_collator_settings,
    sampling_mode,
)
from st_retrofit.models.resolve import role_prompt

if TYPE_CHECKING:
    from st_retrofit.mixing.config import MixingConfig

logger = logging.getLogger(__name__)

ANY_TASK = "*"  # the prompts key for every task without its own entry
NO_TASK_ID = -1


def task_id(task: str | None) -> int:
    """A stable integer id for a task name, equal in every process (for masking across gathered batches)."""
    if task is None:
        return NO_TASK_ID
    return int.from_bytes(hashlib.blake2b(task.encode("utf-8"), digest_size=7).digest(), "little")


@dataclass
class RetrofitDataCollator(SentenceTransformerDataCollator):
    """Collates training rows for contrastive retrofitting: samples ``num_negatives`` hard negatives per row from
    the miner's pool at every step, applies per-task prompts, and passes the teacher's scores and the rows' task
    ids to the loss.

    A row holds text columns (anchor first, then positive, then any fixed negatives), and optionally:

    - ``negatives`` (``pool_column``): the miner's candidate list for the row, best first, and ``negative_ids``;
    - ``label``: the teacher's scores, positive first, then one per pool entry (or per fixed negative);
    - ``task`` (``task_column``): the row's task; without it the trainer's ``dataset_name`` is used when present.

    Negatives are drawn from pool ranks ``[range_min, range_max)``: uniformly, by the teacher's score
    (``softmax(score / sampling_temperature)``, harder ones more often) or the top ones. Texts that are an anchor or
    positive anywhere in the batch are never drawn (they would be a row's own positive counted as a negative),
    and each row prefers texts no other row drew. A row whose range runs short tops up from the rest of its pool,
    then repeats its own negatives, and only with an empty pool borrows other rows' negatives (whose teacher
    score is unknown, so it is sent as ``-inf``: no probability in distillation, never masked). A batch in which
    no row has a usable candidate is collated without negative columns (in-batch negatives only; with
    ``gather_across_devices`` such batches would not line up across processes). ``stats`` counts each case.

    The draw is a pure function of the seed, the epoch and the batch (each row's generator is keyed on its task,
    anchor and positive): a resumed run samples what an uninterrupted run would have, in any dataloader worker.
    :class:`MixingCallback` advances the epoch.

    Prompts: ``prompts`` is one string, or ``{task: str | {"query"|"document"|<column>: str}}`` where ``"*"``
    stands for every other task. A string applies to the ``prompt_side`` columns (the anchor, the others, or
    both); sides without a prompt get the model's own ``query``/``document`` prompt when ``use_model_prompts``
    (the stock collator trains without them, and the model then meets them only at inference).
    :meth:`model_prompts` gives the names to save on the model (``"{task}-query"``, mteb's convention), which
    :class:`MixingCallback` does.

    Args:
        preprocess_fn: ``model.preprocess``.
        prompts: per-task prompts (see above).
        num_negatives: negatives drawn per row from a pool column; ``0`` drops the pool.
        range_min: first pool rank drawn from (skip the very top, which holds the most false negatives).
        range_max: end of the drawn ranks (exclusive); ``None`` = the whole pool.
        sampling: ``"random"`` (uniform over the range), ``"teacher"`` (weighted by teacher score) or ``"top"`` (no randomness).
        sampling_temperature: temperature of the teacher weighting; cosine scores differ by hundredths, so around
            0.05 prefers the harder candidates clearly without always taking them.
        prompt_side: where a string prompt goes: ``"query"`` (the anchor), ``"document"`` (the other columns)
            or ``"both"``.
        use_model_prompts: fall back to the model's ``query``/``document`` prompts.
        task_column: the column naming each row's task; ``None`` uses only ``dataset_name``.
        label_column: the column with teacher scores.
        pool_column: the column with each row's candidate negatives.
        pool_ids_column: the candidates' ids (dropped here; the miner's ``corpus`` resolves them).
        labels: what the loss receives as labels: ``"dict"`` = ``{"teacher_scores": (batch, 1 + k),
            "task_ids": (batch,)}`` (what :class:`~st_retrofit.losses.RetrofitInfoNCELoss` reads), ``"teacher_scores"``
            = the scores tensor alone (``DistillKLDivLoss``, ``MarginMSELoss``), ``"none"``.
        ignore_columns: string columns that are metadata, never trained on.
        teacher_embeddings: a :class:`~st_retrofit.mining.cache.TeacherEmbeddings` lookup: with ``labels="dict"``,
            the teacher's embeddings of every text of the batch (anchors as queries, the rest as documents) go to
            the losses as ``"teacher_embeddings"`` ``(batch, columns, dim)``, for
            :class:`~st_retrofit.losses.TeacherEmbeddingLoss` and the library's ``EmbedDistillLoss``.
        seed: the sampling seed.
        router_mapping, max_length, valid_label_columns: as in the stock collator.

    Relations:
        - :class:`~sentence_transformers.sentence_transformer.data_collator.SentenceTransformerDataCollator` (its
          base) tokenizes whatever columns a row has: a 2-item list of negatives silently becomes one text pair,
          a second label-like column crashes, a ``language`` column is trained on as text, and prompts are per
          column or per dataset only. This collator refuses such columns by name instead.
        - :func:`~sentence_transformers.util.mine_hard_negatives` fixes a row's negatives once; drawing them
          afresh each epoch from a larger pool is what the miner's ``output: pool`` is for.

    Example:
        ::

            from sentence_transformers import SentenceTransformerTrainer

            from st_retrofit.losses import RetrofitInfoNCELoss
            from st_retrofit.mixing import MixingCallback, RetrofitDataCollator

            collator = RetrofitDataCollator(
                model.preprocess,
                num_negatives=4,
                range_min=2,
                sampling="teacher",
                prompts={"msmarco": "Instruct: Given a web search query, retrieve relevant passages\\nQuery: "},
            )
            trainer = SentenceTransformerTrainer(
                model=model,
                train_dataset=mined,  # columns: query, document, negatives, negative_ids, label
                loss=RetrofitInfoNCELoss(model, distill_weight=0.5),
                data_collator=collator,
                callbacks=[MixingCallback()],
            )
    """

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    sampling: str = "random"
    sampling_temperature: float = 0.05
    prompt_side: str = "query"
    use_model_prompts: bool = True
    task_column: str | None = "task"
    label_column: str = "label"
    pool_column: str = "negatives"
    pool_ids_column: str = "negative_ids"
    labels: str = "dict"
    ignore_columns: Sequence[str] = METADATA_COLUMNS
    teacher_embeddings: Any = None
    seed: int = 0
    epoch: int = field(default=0, init=False)
    stats: Counter = field(default_factory=Counter, init=False, repr=False)
    # What each collated batch added to ``stats``, in order: the dataloader collates ahead of the step that trains
    # on a batch, so MixingCallback counts the batches trained from these.
    batch_stats: list[Counter] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def from_config(
        cls, tokenize_fn: Any, config: MixingConfig, loss: Any = None, **settings: Any
    ) -> RetrofitDataCollator:
        """The collator with every setting the recipe's ``mixing`` section shares with it, by name
        (``num_negatives``, ``range_min``, ``range_max``, ``sampling``, ``sampling_temperature``, ``prompts``,
        ``prompt_side``, ``task_column``, ``labels``). ``labels: auto`` becomes what ``loss`` (a loss or its class)
        declares in ``collator_labels`` (st-retrofit's losses: ``dict``), else ``teacher_scores``. ``settings``
        adds or replaces what the section leaves to others: ``num_negatives`` when the section's is ``null`` (the
        miner's), ``teacher_embeddings``, ``router_mapping``, ``seed``."""
        shared = {f.name for f in fields(cls) if f.init} & set(type(config).model_fields)
        values = {name: getattr(config, name) for name in shared}
        if values.get("labels") == "auto":
            values["labels"] = getattr(loss, "collator_labels", "teacher_scores")
        return cls(tokenize_fn, **(values | settings))

    def __post_init__(self) -> None:
        self.sampling = sampling_mode(self.sampling)
        check_collator_settings(
            self.num_negatives,
            self.range_min,
            self.range_max,
            self.sampling,
            self.sampling_temperature,
            self.prompt_side,
            self.labels,
            self.prompts,
        )
        self.ignore_columns = tuple(self.ignore_columns)
        # The trainer hands these to the per-dataset batch samplers, whose duplicate checks must skip them:
        # a task or language column repeats in every row and would make every row a duplicate.
        meta = [self.label_column, *self.valid_label_columns, self.task_column, self.pool_ids_column]
        self.valid_label_columns = list(dict.fromkeys(c for c in [*meta, *self.ignore_columns] if c))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ------------------------------------------------------------------------------------------------------------

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        before = Counter(self.stats)
        batch = self._collate(features)
        self.batch_stats.append(self.stats - before)
        return batch

    def _collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            return {}
        batch: dict[str, Any] = {}
        if DATASET_NAME_COLUMN in features[0]:
            batch[DATASET_NAME_COLUMN] = features[0][DATASET_NAME_COLUMN]
        columns = self._text_columns(features)
        tasks = [self._task(row) for row in features]

        texts = {column: [row[column] for row in features] for column in columns}
        has_scores = self.label_column in features[0]
        teacher = [row[self.label_column] for row in features] if has_scores else None
        if self.pool_column in features[0]:
            if has_scores and len(columns) > 2:
                raise ValueError(
                    f"rows have fixed negative columns {columns[2:]} and a pool {self.pool_column!r}; the teacher "
                    f"scores in {self.label_column!r} cannot line up with both. Keep one of the two"
                )
            if self.num_negatives == 0:
                teacher = [[float(row[self.label_column][0])] for row in features] if has_scores else None
            else:
                sampled, teacher = self._sample_negatives(features, columns, tasks)
                for j in range(self.num_negatives if sampled is not None else 0):
                    column = f"negative_{j + 1}"
                    columns.append(column)
                    texts[column] = [negatives[j] for negatives in sampled]

        router_mapping = self._resolve_router_mapping(batch)
        for position, column in enumerate(columns):
            route = self._get_task_for_column(column, position, router_mapping)
            role = "query" if position == 0 else "document"
            prompts = [self._prompt(task, column, role) for task in tasks]
            for key, value in self._preprocess(texts[column], prompts, route).items():
                batch[f"{column}_{key}"] = value
            if route is not None:
                batch[f"{column}_task"] = route

        label = self._label(teacher, tasks)
        if self.teacher_embeddings is not None and self.labels == "dict":
            label = label or {}
            # (batch, columns, dim): the layout of sentence-transformers' EmbedDistillLoss labels.
            label["teacher_embeddings"] = torch.from_numpy(
                np.stack([
                    self.teacher_embeddings.lookup(texts[column], "query" if position == 0 else "document")
                    for position, column in enumerate(columns)
                ], axis=1).astype(np.float32)
            )  # fmt: skip
        if label is not None:
            batch["label"] = label
        return batch

    # ------------------------------------------------------------------------------------------------------------
    # Columns, tasks, prompts

    def _text_columns(self, features: list[dict[str, Any]]) -> list[str]:
        names = list(features[0])
        for i, row in enumerate(features[1:], 1):
            if set(row) != set(names):
                raise ValueError(
                    f"rows 0 and {i} of one batch have different columns ({sorted(names)} vs {sorted(row)}); "
                    "batches that mix datasets need the same columns: group batches by dataset "
                    "(TemperatureBatchSampler group_by includes 'dataset') or align the columns"
                )
        consumed = {
            DATASET_NAME_COLUMN,
            self.task_column,
            self.label_column,
            self.pool_column,
            self.pool_ids_column,
            *self.ignore_columns,
        }
        other_labels = [c for c in names if c in LABEL_COLUMNS and c != self.label_column]
        if other_labels:
            raise ValueError(
                f"rows carry {other_labels} besides the label column {self.label_column!r}; the stock collator "
                f"would tokenize them as text. Set label_column to the column with teacher scores and drop the rest"
            )
        columns = [c for c in names if c not in consumed]
        for column in columns:
            for i, row in enumerate(features):
                value = row[column]
                if isinstance(value, str):
                    continue
                if value is None:
                    raise ValueError(f"row {i} of the batch has no text in column {column!r}; drop or fill such rows")
                if isinstance(value, (list, tuple)):
                    raise ValueError(
                        f"column {column!r} holds a list (row {i} of the batch); only the pool column "
                        f"({self.pool_column!r}) may hold candidate texts, and the stock collator would tokenize a "
                        f"2-item list as one text pair. Set pool_column={column!r} to draw negatives from it, or "
                        "drop the column"
                    )
                raise ValueError(
                    f"column {column!r} holds {type(value).__name__} values (row {i} of the batch), not texts; add "
                    f"it to ignore_columns, or set label_column={column!r} if it holds teacher scores"
                )
        if not columns:
            raise ValueError(f"rows have no text columns (columns: {names})")
        return columns

    def _task(self, row: Mapping[str, Any]) -> str | None:
        if self.task_column and row.get(self.task_column) is not None:
            return str(row[self.task_column])
        name = row.get(DATASET_NAME_COLUMN)
        return None if name is None else str(name)

    def _prompt_entry(self, task: str | None) -> str | Mapping[str, str] | None:
        if isinstance(self.prompts, str) or not self.prompts:
            return self.prompts or None
        if task is not None and task in self.prompts:
            return self.prompts[task]
        return self.prompts.get(ANY_TASK)

    def _prompt(self, task: str | None, column: str, role: str) -> str | None:
        entry = self._prompt_entry(task)
        prompt = None
        if isinstance(entry, str):
            prompt = entry if self.prompt_side in (role, "both") else None
        elif isinstance(entry, Mapping):
            prompt = entry.get(column, entry.get(role))
        if prompt is None and self.use_model_prompts:
            prompt = role_prompt(getattr(self.preprocess_fn, "__self__", None), role)
        return prompt or None

    def _preprocess(self, texts: list[str], prompts: list[str | None], route: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"task": route}
        max_length = self._get_max_length_for_task(route)
        if max_length is not None:
            kwargs["max_length"] = max_length
        distinct = set(prompts)
        if len(distinct) == 1:
            return self.preprocess_fn(texts, prompt=distinct.pop(), **kwargs)
        # Rows of several tasks: one call cannot take several prompts, so they are prepended here. Pooling that
        # leaves prompt tokens out needs one prompt length per batch, which such a batch does not have.
        model = getattr(self.preprocess_fn, "__self__", None)
        if model is not None and any(getattr(m, "include_prompt", True) is False for m in model.modules()):
            raise ValueError(
                "this batch mixes tasks with different prompts, and the model's pooling excludes prompt tokens "
                "(include_prompt=False), which needs one prompt per batch: group batches by task or dataset"
            )
        return self.preprocess_fn([(p or "") + t for p, t in zip(prompts, texts, strict=True)], prompt=None, **kwargs)

    def model_prompts(self) -> dict[str, str]:
        """The prompts to save on the trained model: ``{task}-query`` / ``{task}-document`` (mteb's names), and
        ``query`` / ``document`` for the ``"*"`` entry or a single string. Column-specific entries are training-only."""
        entries = {ANY_TASK: self.prompts} if isinstance(self.prompts, str) else dict(self.prompts or {})
        saved = {}
        for task, entry in entries.items():
            for role in ("query", "document"):
                if isinstance(entry, str):
                    text = entry if self.prompt_side in (role, "both") else None
                else:
                    text = entry.get(role)
                if text is not None:
                    saved[role if task == ANY_TASK else f"{task}-{role}"] = text
        return saved

    # ------------------------------------------------------------------------------------------------------------
    # Negatives and labels

    def _row_rng(self, task: str | None, row: Mapping[str, Any], columns: list[str]) -> np.random.Generator:
        key = "\x1f".join([str(self.seed), str(self.epoch), task or "", *(row[c] for c in columns[:2])])
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))

    def _draw(
        self, candidates: list[int], count: int, scores: np.ndarray | None, rng: np.random.Generator
    ) -> list[int]:
        if count >= len(candidates):
            return list(candidates)
        if self.sampling == "top":
            return candidates[:count]
        if self.sampling == "random":
            return [candidates[i] for i in rng.permutation(len(candidates))[:count]]
        # Gumbel top-k: the same law as drawing one at a time without replacement with p ∝ exp(score / T).
        keys = scores[candidates] / self.sampling_temperature + rng.gumbel(size=len(candidates))
        return [candidates[i] for i in np.argsort(-keys, kind="stable")[:count]]

    def _sample_negatives(
        self, features: list[dict[str, Any]], columns: list[str], tasks: list[str | None]
    ) -> tuple[list[list[str]] | None, list[list[float]] | None]:
        k = self.num_negatives
        blocked = {row[c] for row in features for c in columns[:2]}
        has_scores = self.label_column in features[0]
        if self.sampling == "teacher" and not has_scores:
            raise ValueError(f"sampling='teacher' needs teacher scores in the {self.label_column!r} column")
        taken: set[str] = set()
        picks: list[list[int]] = []
        pools: list[list[str]] = []
        pool_scores: list[np.ndarray | None] = []
        for i, row in enumerate(features):
            pool = list(row[self.pool_column] or [])
            scores = None
            if has_scores:
                label = row[self.label_column]
                if not isinstance(label, (list, tuple)) or len(label) != len(pool) + 1:
                    size = len(label) if isinstance(label, (list, tuple)) else "one"
                    raise ValueError(
                        f"row {i} of the batch: {self.label_column!r} must hold 1 + len({self.pool_column!r}) = "
                        f"{len(pool) + 1} teacher scores (positive first), got {size}"
                    )
                scores = np.asarray(label[1:], dtype=np.float64)
            rng = self._row_rng(tasks[i], row, columns)
            end = len(pool) if self.range_max is None else min(self.range_max, len(pool))
            open_ = [j for j in range(len(pool)) if pool[j] not in blocked]
            in_range = [j for j in open_ if self.range_min <= j < end]
            # Best first: in range and unused by other rows, then in range, then anywhere in the pool.
            chosen: list[int] = []
            for tier in ([j for j in in_range if pool[j] not in taken], in_range, open_):
                rest = [j for j in tier if j not in chosen]
                chosen += self._draw(rest, k - len(chosen), scores, rng)
                if len(chosen) == k:
                    break
            if any(j not in in_range for j in chosen):
                self.stats["rows_outside_range"] += 1
            if len(chosen) < k:
                self.stats["rows_short"] += 1
            if chosen and len(chosen) < k:
                self.stats["negatives_repeated"] += k - len(chosen)
                chosen += [chosen[r] for r in rng.choice(len(chosen), size=k - len(chosen))]
            chosen.sort()
            taken.update(pool[j] for j in chosen)
            picks.append(chosen)
            pools.append(pool)
            pool_scores.append(scores)
        self.stats["rows"] += len(features)

        sampled, teacher = [], [] if has_scores else None
        borrowable = sorted(taken - blocked)
        if not borrowable:
            # No row has a candidate that is not already an anchor or positive in this batch (empty pools, or a
            # corpus small enough to fit in one batch): in-batch negatives are all there is.
            self.stats["batches_without_negatives"] += 1
            if self.stats["batches_without_negatives"] == 1:
                logger.warning(
                    "A batch had no usable hard negative in %r (empty pools, or every candidate is a positive in the "
                    'batch); it trains on in-batch negatives alone (stats["batches_without_negatives"] counts them)',
                    self.pool_column,
                )
            teacher = [[float(row[self.label_column][0])] for row in features] if has_scores else None
            return None, teacher
        for i, row in enumerate(features):
            texts = [pools[i][j] for j in picks[i]]
            values = [float(pool_scores[i][j]) for j in picks[i]] if has_scores else []
            if not texts:
                rng = self._row_rng(tasks[i], row, columns)
                lend = rng.choice(len(borrowable), size=k, replace=len(borrowable) < k)
                texts = [borrowable[j] for j in lend]
                values = [float("-inf")] * k
                self.stats["negatives_borrowed"] += k
            sampled.append(texts)
            if teacher is not None:
                teacher.append([float(row[self.label_column][0]), *values])
        return sampled, teacher

    def _label(self, teacher: list[Any] | None, tasks: list[str | None]) -> Any:
        if self.labels == "none":
            return None
        scores = torch.tensor(teacher, dtype=torch.float32) if teacher is not None else None
        if self.labels == "teacher_scores":
            return scores
        if scores is not None and scores.dim() != 2:
            raise ValueError(
                f"{self.label_column!r} holds one number per row, not teacher scores for (positive, negatives...); "
                "use labels='teacher_scores' to pass it to the loss as it is"
            )
        label = {}
        if scores is not None:
            label["teacher_scores"] = scores
        if any(task is not None for task in tasks):
            label["task_ids"] = torch.tensor([task_id(task) for task in tasks], dtype=torch.long)
        return label or None

    # ------------------------------------------------------------------------------------------------------------

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_negatives": self.num_negatives,
            "range_min": self.range_min,
            "range_max": self.range_max,
            "sampling": self.sampling,
            "sampling_temperature": self.sampling_temperature,
            "prompts": self.prompts,
            "prompt_side": self.prompt_side,
            "use_model_prompts": self.use_model_prompts,
            "task_column": self.task_column,
            "labels": self.labels,
            "seed": self.seed,
        }
