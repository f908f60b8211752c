"""Temperature-sampled, group-homogeneous batches for multi-dataset training."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers.base.sampler import MultiDatasetDefaultBatchSampler
from torch.utils.data import BatchSampler, ConcatDataset
from tqdm.auto import tqdm

from st_retrofit.config import ConfigError

if TYPE_CHECKING:
    from st_retrofit.mixing.config import MixingConfig
from st_retrofit.mixing.settings import (
    DATASET_NAME_COLUMN,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    check_sampler_settings,
)

logger = logging.getLogger(__name__)

DATASET_KEY = "dataset"  # the group_by entry that means "the sub-dataset a row comes from"
_PENDING_LIMIT = 4  # deferred rows kept per group, in batches: beyond that a group is mostly duplicates


def mixture_probabilities(
    sizes: Mapping[str, int],
    alpha: float,
    weights: Mapping[str, float] | None = None,
    caps: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """The probability of drawing a batch from each group: ``p_g ∝ weight_g * min(size_g, cap_g) ** alpha``.

    ``alpha=1`` is proportional to size, ``alpha=0`` uniform; 0.3 to 0.7 is the usual compromise (mT5, XLM-R).
    A cap limits how much of a group's size counts, as T5's "examples-proportional mixing with a limit".

    Example::

        >>> mixture_probabilities({"msmarco": 500_000, "synthetic-de": 5_000}, alpha=0.5)
        {'msmarco': 0.909..., 'synthetic-de': 0.0909...}
    """
    weights, caps = weights or {}, caps or {}
    mass = {
        name: weights.get(name, 1.0) * float(min(size, caps.get(name, size))) ** alpha for name, size in sizes.items()
    }
    total = sum(mass.values())
    if total <= 0:
        raise ValueError("every group is empty; there is nothing to sample")
    return {name: m / total for name, m in mass.items()}


def _column(split: Any, name: str) -> list:
    # Through arrow: the trainer's transform is bypassed, the indices mapping (select/shuffle) is kept, and it is
    # ~30x faster than iterating the formatted column.
    return split.with_format("arrow")[name].to_pylist()


def _text_hash(text: str) -> int:
    # Stable across processes (Python's hash() is salted per process), so every DDP rank forms the same batches.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _keyword_settings(cls: type) -> set[str]:
    """The sampler's settings: the keyword-only arguments of its ``__init__``."""
    return {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}


@dataclass
class _Group:
    """One stratum: the rows sharing the ``group_by`` key, as global indices into the ``ConcatDataset``."""

    name: str
    rows: np.ndarray  # int64, global indices in row order
    probability: float = 0.0


class TemperatureBatchSampler(MultiDatasetDefaultBatchSampler):
    """Draws every batch from one group (a dataset, a task, a language...), choosing the group with probability
    proportional to its size to the power ``alpha``, with no repeated text inside a batch.

    Pass it to :class:`~sentence_transformers.SentenceTransformerTrainingArguments` as
    ``multi_dataset_batch_sampler`` (through :meth:`configure`) with a ``DatasetDict`` as the training data.
    A single ``Dataset`` can be wrapped as ``DatasetDict({"train": dataset})`` to group its rows by a column.

    How an epoch is drawn:

    - Groups are the distinct values of ``group_by``: ``"dataset"`` (the DatasetDict's splits), any column
      (``"task"``, ``"language"``), or a list of them (``["dataset", "language"]`` = one group per pair). Groups
      defined by a column alone can mix rows of several datasets in one batch.
    - The epoch has ``num_batches`` batches, by default ``sum(min(size_g, cap_g)) / batch_size``. Group ``g`` gets
      ``num_batches * p_g`` of them, rounded up or down by systematic sampling, so that the expected count is
      exact and every group, however rare, is drawn in some epochs; the batches' order is shuffled.
    - Each group reads its rows from an endless stream of seeded permutations: small groups are repeated
      (upsampled), large ones are visited in part, and the next epoch continues where this one stopped.
    - With ``no_duplicates``, a row whose text (in any text column) is already in the batch waits for the group's
      next batch, like ``NoDuplicatesBatchSampler`` does, but across all the text columns of the rows.

    Every epoch is a pure function of ``(seed, epoch)``: the trainer's ``set_epoch`` and its skipping of finished
    batches on resume reproduce exactly the batches an uninterrupted run would have seen, and every DDP rank forms
    the same batches (accelerate then gives each rank its share).

    Args:
        dataset: the trainer's ``ConcatDataset`` of ``datasets.Dataset`` splits.
        batch_samplers: the trainer's per-split samplers; only their ``batch_size``, ``drop_last`` and
            ``valid_label_columns`` are used, because batches are formed here.
        generator: unused; randomness is derived from ``seed`` and the epoch, for resumability.
        seed: the seed (the trainer passes ``args.seed``).
        alpha: mixing exponent in [0, 1]: 1 = proportional to group size, 0 = uniform over groups.
        weights: extra multiplier per group name (default 1).
        caps: per group name, the most rows its size counts for (in the probability and the epoch length).
        group_by: ``"dataset"``, a column name, or a list of them; see above.
        dataset_names: names of the splits, in order (``list(train_dataset)``). Defaults to the trainer's
            ``dataset_name`` column when it is there, else ``dataset_0, dataset_1, ...``.
        num_batches: batches per epoch; ``None`` derives it from the (capped) group sizes.
        no_duplicates: keep repeated texts out of a batch.
        text_columns: the columns compared for duplicates; ``None`` = every string column except labels,
            ``group_by`` columns, ``dataset_name`` and ``ignore_columns``.
        ignore_columns: string columns that are metadata, not texts.
        length_buckets: order each group's stream by text length within windows of this many batches (the
            batches of a window are then shuffled among themselves), so that a batch holds texts of similar length
            and pads less; ``0`` = off. A row's length is its longest text column's, in characters. Every row is
            still visited once per pass; what changes is which rows share a batch (and so each other's in-batch
            negatives).

    Relations:
        - :class:`~sentence_transformers.base.sampler.ProportionalBatchSampler` is ``alpha=1`` without caps,
          weights or column groups; :class:`~sentence_transformers.base.sampler.RoundRobinBatchSampler` stops at
          the smallest dataset. Neither lets a group be a task or language inside a dataset.
        - :class:`~sentence_transformers.base.sampler.NoDuplicatesBatchSampler` removes duplicates within one
          dataset; here the check also holds for batches whose group spans several datasets.

    Example:
        ::

            from datasets import DatasetDict
            from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

            from st_retrofit.mixing import TemperatureBatchSampler

            train_dataset = DatasetDict({"msmarco": msmarco, "synthetic": synthetic})
            args = SentenceTransformerTrainingArguments(
                output_dir="out",
                multi_dataset_batch_sampler=TemperatureBatchSampler.configure(
                    alpha=0.5, group_by=["dataset", "language"], dataset_names=list(train_dataset)
                ),
            )
            trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
    """

    def __init__(
        self,
        dataset: ConcatDataset,
        batch_samplers: list[BatchSampler],
        generator: Any = None,
        seed: int = 0,
        *,
        alpha: float = 0.5,
        weights: Mapping[str, float] | None = None,
        caps: Mapping[str, int] | None = None,
        group_by: str | Sequence[str] = DATASET_KEY,
        dataset_names: Sequence[str] | None = None,
        num_batches: int | None = None,
        no_duplicates: bool = True,
        text_columns: Sequence[str] | None = None,
        ignore_columns: Sequence[str] = METADATA_COLUMNS,
        length_buckets: int = 0,
    ) -> None:
        super().__init__(dataset, batch_samplers=batch_samplers, generator=generator, seed=seed)
        self.group_by = check_sampler_settings(alpha, weights, caps, group_by, num_batches)
        self.alpha = alpha
        self.weights = dict(weights or {})
        self.caps = dict(caps or {})
        self.no_duplicates = no_duplicates
        self.text_columns = list(text_columns) if text_columns is not None else None
        self.ignore_columns = list(ignore_columns)
        self.label_columns = list(getattr(batch_samplers[0], "valid_label_columns", None) or LABEL_COLUMNS)
        self.dataset_names = self._dataset_names(dataset_names)

        self.groups = self._build_groups()
        self._check_names(self.weights, "weights")
        self._check_names(self.caps, "caps")
        probabilities = mixture_probabilities(
            {g.name: len(g.rows) for g in self.groups}, self.alpha, self.weights, self.caps
        )
        for group in self.groups:
            group.probability = probabilities[group.name]
        effective_rows = sum(min(len(g.rows), self.caps.get(g.name, len(g.rows))) for g in self.groups)
        if num_batches is None:
            num_batches = (
                effective_rows // self.batch_size if self.drop_last else -(-effective_rows // self.batch_size)
            )
        if num_batches < 1:
            raise ValueError(
                f"{effective_rows} rows make no full batch of {self.batch_size}; lower the batch size, set "
                "num_batches, or turn off dataloader_drop_last"
            )
        self.num_batches = num_batches
        self._hashes = self._hash_texts() if no_duplicates else None
        if length_buckets < 0:
            raise ValueError(f"length_buckets must be >= 0, got {length_buckets}")
        self.length_buckets = length_buckets
        self._lengths = self._text_lengths() if length_buckets else None
        self._offsets_cache: dict[int, np.ndarray] = {0: np.zeros(len(self.groups), dtype=np.int64)}
        self._warned_short: set[str] = set()
        logger.info("Mixture over %d groups, %d batches per epoch:\n%s", len(self.groups), num_batches, self.table())

    @classmethod
    def from_config(cls, config: MixingConfig, **settings: Any) -> functools.partial:
        """:meth:`configure` with every setting the recipe's ``mixing`` section shares with the sampler, by name
        (``alpha``, ``weights``, ``caps``, ``group_by``, ``num_batches``, ``no_duplicates``, ``length_buckets``);
        ``settings`` adds what the section cannot know (``dataset_names``)."""
        shared = {name for name in _keyword_settings(cls) if name in type(config).model_fields}
        return cls.configure(**{name: getattr(config, name) for name in shared}, **settings)

    @classmethod
    def configure(cls, **settings: Any) -> functools.partial:
        """The sampler with its settings bound, for ``multi_dataset_batch_sampler``. Settings are checked now,
        not when the trainer builds its first dataloader."""
        check_sampler_settings(
            settings.get("alpha", 0.5),
            settings.get("weights"),
            settings.get("caps"),
            settings.get("group_by", DATASET_KEY),
            settings.get("num_batches"),
        )
        unknown = set(settings) - _keyword_settings(cls)
        if unknown:
            raise TypeError(f"TemperatureBatchSampler.configure got unknown settings {sorted(unknown)}")
        return functools.partial(cls, **settings)

    # ------------------------------------------------------------------------------------------------------------
    # Groups

    def _dataset_names(self, names: Sequence[str] | None) -> list[str]:
        splits = self.dataset.datasets
        if names is not None:
            if len(names) != len(splits):
                raise ValueError(f"dataset_names has {len(names)} names for {len(splits)} datasets")
            return [str(n) for n in names]
        inferred = []
        for i, split in enumerate(splits):
            # The trainer tags rows with their split's name (a transform) when it has a reason to.
            first = split[0] if len(split) else {}
            inferred.append(str(first.get(DATASET_NAME_COLUMN, f"dataset_{i}")))
        return inferred

    def _build_groups(self) -> list[_Group]:
        from datasets import Dataset

        parts: dict[str, list[np.ndarray]] = {}
        offset = 0
        for i, split in enumerate(self.dataset.datasets):
            if not isinstance(split, Dataset):
                raise TypeError(f"TemperatureBatchSampler needs datasets.Dataset splits, got {type(split).__name__}")
            if not len(split):
                continue
            key_columns = []
            for column in self.group_by:
                if column == DATASET_KEY:
                    key_columns.append([self.dataset_names[i]] * len(split))
                elif column in split.column_names:
                    key_columns.append([str(v) for v in _column(split, column)])
                else:
                    raise ConfigError(
                        "group_by",
                        f"dataset {self.dataset_names[i]!r} has no column {column!r} "
                        f"(columns: {split.column_names}); add it or group by {DATASET_KEY!r}",
                    )
            names, inverse = np.unique(["/".join(key) for key in zip(*key_columns, strict=True)], return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]
            for name, rows in zip(names, np.split(order, bounds), strict=True):
                parts.setdefault(str(name), []).append(rows.astype(np.int64) + offset)
            offset += len(split)
        if not parts:
            raise ValueError("the training data has no rows")
        return [_Group(name=name, rows=np.sort(np.concatenate(rows))) for name, rows in sorted(parts.items())]

    def _check_names(self, mapping: Mapping[str, Any], key: str) -> None:
        known = {g.name for g in self.groups}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(key, f"no group named {unknown}; the groups are {sorted(known)}")

    def _duplicate_columns(self, split: Any) -> list[str]:
        if self.text_columns is not None:
            return [c for c in self.text_columns if c in split.column_names]
        skip = {*self.label_columns, *self.ignore_columns, *self.group_by, DATASET_NAME_COLUMN}
        return [
            name
            for name, feature in split.features.items()
            if name not in skip and getattr(feature, "dtype", None) in ("string", "large_string")
        ]

    def _hash_texts(self) -> np.ndarray:
        """A (rows, text columns) array of 64-bit text hashes over the whole ``ConcatDataset`` (0 = no text)."""
        splits = self.dataset.datasets
        columns = [self._duplicate_columns(split) for split in splits]
        table = np.zeros((sum(len(s) for s in splits), max(map(len, columns), default=0)), dtype=np.uint64)
        offset = 0
        with tqdm(total=len(table), desc="Hashing texts for duplicate checks", disable=len(table) < 200_000) as bar:
            for split, names in zip(splits, columns, strict=True):
                for j, name in enumerate(names):
                    table[offset : offset + len(split), j] = [
                        _text_hash(v) if isinstance(v, str) else 0 for v in _column(split, name)
                    ]
                offset += len(split)
                bar.update(len(split))
        return table

    def _text_lengths(self) -> np.ndarray:
        """Each row's longest text, in characters, over the whole ``ConcatDataset``."""
        lengths = []
        for split in self.dataset.datasets:
            columns = [[len(v) if isinstance(v, str) else 0 for v in _column(split, name)]
                       for name in self._duplicate_columns(split)]  # fmt: skip
            lengths.append(np.max(columns, axis=0) if columns else np.zeros(len(split), dtype=np.int64))
        return np.concatenate(lengths).astype(np.int64)

    # ------------------------------------------------------------------------------------------------------------
    # Epochs

    def quotas(self, epoch: int) -> np.ndarray:
        """Batches per group in ``epoch``: systematic sampling of ``num_batches`` points over the cumulative
        probabilities, so each count is ``floor`` or ``ceil`` of ``num_batches * p`` and exact in expectation."""
        u = np.random.default_rng([self.seed, epoch, 0]).random()
        edges = np.concatenate([[0.0], np.cumsum([g.probability for g in self.groups])]) * self.num_batches
        edges[-1] = self.num_batches
        below = np.clip(np.ceil(edges - u), 0, self.num_batches).astype(np.int64)
        return np.diff(below)

    def _stream_offsets(self, epoch: int) -> np.ndarray:
        """Where each group's row stream starts in ``epoch``: the rows that earlier epochs were allotted."""
        known = max(e for e in self._offsets_cache if e <= epoch)
        offsets = self._offsets_cache[known]
        for e in range(known, epoch):
            offsets = offsets + self.quotas(e) * self.batch_size
            self._offsets_cache[e + 1] = offsets
        return offsets

    def _permutation(self, group: int, rank: int) -> np.ndarray:
        permutation = np.random.default_rng([self.seed, group, rank, 1]).permutation(len(self.groups[group].rows))
        if not self.length_buckets:
            return permutation
        # Sort each window of the pass by length, cut it into batches, and shuffle those: similar lengths share a
        # batch, while the order of lengths across the epoch stays random.
        rng = np.random.default_rng([self.seed, group, rank, 3])
        lengths = self._lengths[self.groups[group].rows]
        window = self.batch_size * self.length_buckets
        parts = []
        for start in range(0, len(permutation), window):
            chunk = permutation[start : start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            parts += [batches[i] for i in rng.permutation(len(batches))]
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        quotas = self.quotas(epoch)
        order = np.repeat(np.arange(len(self.groups)), quotas)
        np.random.default_rng([self.seed, epoch, 2]).shuffle(order)
        streams = [_GroupStream(self, g, int(start)) for g, start in enumerate(self._stream_offsets(epoch))]
        for g in order:
            batch = streams[g].next_batch()
            if batch is not None:
                yield batch

    def __len__(self) -> int:
        return self.num_batches

    # ------------------------------------------------------------------------------------------------------------
    # Reporting

    def describe(self) -> list[dict[str, Any]]:
        """One entry per group: rows, the share of rows, the sampling probability and expected batches per epoch."""
        total = sum(len(g.rows) for g in self.groups)
        return [
            {
                "group": g.name,
                "rows": len(g.rows),
                "row_share": len(g.rows) / total,
                "weight": self.weights.get(g.name, 1.0),
                "cap": self.caps.get(g.name),
                "probability": g.probability,
                "batches_per_epoch": g.probability * self.num_batches,
            }
            for g in self.groups
        ]

    def table(self) -> str:
        lines = [f"{'group':<28} {'rows':>9} {'row share':>9} {'p(batch)':>9} {'batches':>8}"]
        for entry in self.describe():
            lines.append(
                f"{entry['group'][:28]:<28} {entry['rows']:>9} {entry['row_share']:>9.3f} "
                f"{entry['probability']:>9.3f} {entry['batches_per_epoch']:>8.1f}"
            )
        return "\n".join(lines)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "group_by": self.group_by,
            "weights": self.weights,
            "caps": self.caps,
            "num_batches": self.num_batches,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "no_duplicates": self.no_duplicates,
            "length_buckets": self.length_buckets,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config_dict().items())
        return f"{type(self).__name__}({settings})"


class _GroupStream:
    """Batches of one group within one epoch, read from the group's endless stream of permutations."""

    def __init__(self, sampler: TemperatureBatchSampler, group: int, start: int) -> None:
        self.sampler, self.group, self.position = sampler, group, start
        self.rows = sampler.groups[group].rows
        self.size = len(self.rows)
        self.pending: list[tuple[int, list[int]]] = []
        self._rank, self._permutation = -1, np.empty(0, dtype=np.int64)

    def _pull(self, count: int) -> list[tuple[int, list[int]]]:
        """The next ``count`` rows of the stream with their text hashes."""
        positions = np.arange(self.position, self.position + count)
        self.position += count
        ranks = positions // self.size
        rows = np.empty(count, dtype=np.int64)
        for rank in np.unique(ranks):
            if rank != self._rank:
                self._rank, self._permutation = int(rank), self.sampler._permutation(self.group, int(rank))
            at = ranks == rank
            rows[at] = self.rows[self._permutation[positions[at] % self.size]]
        hashes = self.sampler._hashes[rows].tolist() if self.sampler._hashes is not None else [[]] * count
        return list(zip(rows.tolist(), hashes, strict=True))

    def next_batch(self) -> list[int] | None:
        sampler = self.sampler
        batch: list[int] = []
        members: set[int] = set()
        texts: set[int] = set()

        def accept(row: int, hashes: list[int]) -> bool:
            if row in members:  # the same row again from the next pass over a small group
                return False
            if any(h in texts for h in hashes if h):
                return False
            texts.update(h for h in hashes if h)
            members.add(row)
            batch.append(row)
            return True

        waiting, self.pending = self.pending, []
        for item in waiting:
            if len(batch) == sampler.batch_size or not accept(*item):
                self.pending.append(item)
        pulled = 0
        # One full pass over the group without filling the batch means it cannot be filled.
        while len(batch) < sampler.batch_size and pulled < self.size:
            chunk = self._pull(min(sampler.batch_size - len(batch), self.size - pulled))
            pulled += len(chunk)
            for item in chunk:
                if not accept(*item):
                    self.pending.append(item)
        del self.pending[_PENDING_LIMIT * sampler.batch_size :]

        if len(batch) < sampler.batch_size:
            name = sampler.groups[self.group].name
            if name not in sampler._warned_short:
                sampler._warned_short.add(name)
                logger.warning(
                    "Group %r has too few distinct texts for a batch of %d (got %d)%s",
                    name,
                    sampler.batch_size,
                    len(batch),
                    "; its batches are dropped" if sampler.drop_last else "; its batches are short",
                )
            if sampler.drop_last:
                return None
        return batch
