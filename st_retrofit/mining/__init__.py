"""Hard-negative mining with a teacher model: cache, search, filters, miner, report and the recipe stage."""

from __future__ import annotations

from st_retrofit.mining.cache import EmbeddingCache, EmbeddingTable, model_fingerprint
from st_retrofit.mining.filters import NegativeFilter, normalize_text
from st_retrofit.mining.index import ExactSearcher, FaissSearcher, build_searcher
from st_retrofit.mining.miner import HardNegativeMiner, MiningResult, mine_negatives, negative_columns, pool_to_ntuple
from st_retrofit.mining.report import plot_score_distributions
from st_retrofit.mining.stage import mine_stage

__all__ = [
    "EmbeddingCache",
    "EmbeddingTable",
    "ExactSearcher",
    "FaissSearcher",
    "HardNegativeMiner",
    "MiningResult",
    "NegativeFilter",
    "build_searcher",
    "mine_negatives",
    "mine_stage",
    "model_fingerprint",
    "negative_columns",
    "normalize_text",
    "plot_score_distributions",
    "pool_to_ntuple",
]
