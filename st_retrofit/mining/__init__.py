"""Hard-negative mining with a teacher model."""

from __future__ import annotations

from st_retrofit.mining.miner import mine_negatives, mine_stage, negative_columns

__all__ = ["mine_negatives", "mine_stage", "negative_columns"]
