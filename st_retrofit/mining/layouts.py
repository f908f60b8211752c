"""The kinds of ``mining.output``: how the mined negatives of each row are laid out in the dataset.

- ``n-tuple``: ``negative_1..n`` columns, what sentence-transformers' losses read as they are (and what
  ``mine_hard_negatives`` writes); a row with fewer than ``num_negatives`` candidates left is dropped.
- ``pool``: a ``negatives`` list of the best candidates in range with their corpus rows (``negative_ids``), for a
  collator that draws fresh negatives each epoch (:class:`~st_retrofit.mixing.RetrofitDataCollator`); short
  rows are kept and topped up in-batch.

A new layout subclasses :class:`OutputLayout` and is registered with ``@OUTPUT_LAYOUTS.register``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from st_retrofit.registry import Kind, Registry

if TYPE_CHECKING:
    from st_retrofit.mining.config import MiningConfig

POOL_COLUMN, POOL_IDS_COLUMN = "negatives", "negative_ids"


def negative_columns(num_negatives: int) -> list[str]:
    return [f"negative_{i}" for i in range(1, num_negatives + 1)]


class OutputLayout(Kind):
    """One way to write a row's negatives."""

    keeps_short_rows: ClassVar[bool]  # whether a row with fewer than num_negatives candidates is written
    draws_per_epoch: ClassVar[bool]  # whether training draws its negatives from the row (the card says how)

    def columns(self, config: MiningConfig) -> list[str]:
        """The negative columns this layout adds between ``document`` and ``label``."""
        raise NotImplementedError

    def kept(self, config: MiningConfig, available: int) -> int | None:
        """How many of the ``available`` candidates in range to keep, best first; ``None``: choose
        ``num_negatives`` by ``mining.sampling``."""
        return None

    def add(self, columns: dict[str, list], config: MiningConfig, texts: list[str], ids: list[int]) -> None:
        """Append one row's negatives (texts and corpus rows, best first) to ``columns``."""
        raise NotImplementedError


OUTPUT_LAYOUTS: Registry[OutputLayout] = Registry("mining output layout", OutputLayout)


@OUTPUT_LAYOUTS.register
class NTupleLayout(OutputLayout):
    name = "n-tuple"
    description = "negative_1..n columns (what sentence-transformers' losses read); short rows are dropped"
    keeps_short_rows = False
    draws_per_epoch = False

    def columns(self, config):
        return negative_columns(config.num_negatives)

    def add(self, columns, config, texts, ids):
        for column, text in zip(negative_columns(config.num_negatives), texts, strict=True):
            columns[column].append(text)


@OUTPUT_LAYOUTS.register
class PoolLayout(OutputLayout):
    name = "pool"
    description = "a negatives list (best first, with negative_ids) that a sampler draws from each epoch"
    keeps_short_rows = True
    draws_per_epoch = True

    def columns(self, config):
        return [POOL_COLUMN, POOL_IDS_COLUMN]

    def kept(self, config, available):
        return min(available, config.pool_size or available)

    def add(self, columns, config, texts, ids):
        columns[POOL_COLUMN].append(texts)
        columns[POOL_IDS_COLUMN].append(ids)
