"""Hard-negative mining with a teacher model: cache, search, filters, miner, report and the recipe stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.mining.cache import EmbeddingCache, EmbeddingTable, model_fingerprint
    from st_retrofit.mining.config import MiningConfig, SearchConfig
    from st_retrofit.mining.filters import NegativeFilter
    from st_retrofit.mining.index import ExactSearcher, FaissSearcher
    from st_retrofit.mining.layouts import OUTPUT_LAYOUTS, OutputLayout, negative_columns
    from st_retrofit.mining.miner import HardNegativeMiner, MiningResult, mine_negatives, pool_to_ntuple
    from st_retrofit.mining.report import plot_score_distributions
    from st_retrofit.mining.search_backends import SEARCH_BACKENDS, SearchBackend, build_searcher
    from st_retrofit.mining.stage import mine_stage
    from st_retrofit.text import normalize_text

_EXPORTS = {
    "EmbeddingCache": "st_retrofit.mining.cache",
    "EmbeddingTable": "st_retrofit.mining.cache",
    "model_fingerprint": "st_retrofit.mining.cache",
    "NegativeFilter": "st_retrofit.mining.filters",
    "normalize_text": "st_retrofit.text",
    "ExactSearcher": "st_retrofit.mining.index",
    "FaissSearcher": "st_retrofit.mining.index",
    "build_searcher": "st_retrofit.mining.search_backends",
    "HardNegativeMiner": "st_retrofit.mining.miner",
    "MiningResult": "st_retrofit.mining.miner",
    "mine_negatives": "st_retrofit.mining.miner",
    "negative_columns": "st_retrofit.mining.layouts",
    "OUTPUT_LAYOUTS": "st_retrofit.mining.layouts",
    "OutputLayout": "st_retrofit.mining.layouts",
    "SEARCH_BACKENDS": "st_retrofit.mining.search_backends",
    "SearchBackend": "st_retrofit.mining.search_backends",
    "pool_to_ntuple": "st_retrofit.mining.miner",
    "plot_score_distributions": "st_retrofit.mining.report",
    "mine_stage": "st_retrofit.mining.stage",
    "MiningConfig": "st_retrofit.mining.config",
    "SearchConfig": "st_retrofit.mining.config",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
