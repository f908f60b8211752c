"""The kinds of ``mining.search.backend``: each registered class says what it needs and builds its searcher.

``exact`` streams the corpus through bounded score blocks (:class:`~st_retrofit.mining.index.ExactSearcher`);
``flat``, ``ivf`` and ``hnsw`` are faiss indexes (:class:`~st_retrofit.mining.index.FaissSearcher`, the ``faiss``
extra); ``auto`` picks one of them from the search's size. A new backend subclasses :class:`SearchBackend` and is
registered with ``@SEARCH_BACKENDS.register``; ``mining.search.backend`` then accepts its name.

Imports stay light (the recipe reads this module to check its field): the searchers load numpy, torch and faiss
when they are built.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from st_retrofit.registry import Kind, Registry

if TYPE_CHECKING:
    from st_retrofit.mining.cache import EmbeddingTable
    from st_retrofit.mining.config import SearchConfig
    from st_retrofit.mining.index import Searcher


class SearchBackend(Kind):
    """One way to find each query's nearest corpus vectors."""

    def resolve(self, config: SearchConfig, n_queries: int, n_corpus: int) -> SearchBackend:
        """The backend that runs a search of this size (itself; ``auto`` chooses)."""
        return self

    def build(
        self, corpus: EmbeddingTable, config: SearchConfig, seed: int = 0, index_path: str | Path | None = None
    ) -> Searcher:
        raise NotImplementedError


SEARCH_BACKENDS: Registry[SearchBackend] = Registry("search backend", SearchBackend)


@SEARCH_BACKENDS.register
class AutoSearch(SearchBackend):
    name = "auto"
    description = "exact while queries x corpus <= exact_max_pairs (100x that on a GPU), faiss IVF beyond"

    def resolve(self, config: SearchConfig, n_queries: int, n_corpus: int) -> SearchBackend:
        import torch

        limit = config.exact_max_pairs * (100 if torch.cuda.is_available() else 1)
        return SEARCH_BACKENDS["exact" if n_queries * n_corpus <= limit else "ivf"]


@SEARCH_BACKENDS.register
class ExactSearch(SearchBackend):
    name = "exact"
    description = "exact top-k, the corpus streamed through one bounded fp32 score block (memory_mb)"

    def build(self, corpus, config, seed=0, index_path=None):
        from st_retrofit.mining.index import ExactSearcher

        return ExactSearcher(corpus, memory_mb=config.memory_mb)


class FaissSearch(SearchBackend):
    """A faiss index, built in blocks, saved for a resumed run, moved to every GPU faiss sees when ``on_gpu``."""

    modules = ("faiss",)
    on_gpu: ClassVar[bool] = True  # faiss has GPU versions of this index

    def make_index(self, faiss: Any, corpus: EmbeddingTable, config: SearchConfig, seed: int) -> Any:
        """An empty (trained, where the index needs it) index for ``corpus``'s vectors."""
        raise NotImplementedError

    def tune(self, index: Any, config: SearchConfig) -> None:
        """Set the search-time parameters on a built or loaded index."""

    def build(self, corpus, config, seed=0, index_path=None):
        from st_retrofit.mining.index import FaissSearcher

        return FaissSearcher(corpus, self, config, seed, index_path)


@SEARCH_BACKENDS.register
class FlatSearch(FaissSearch):
    name = "flat"
    description = "faiss IndexFlatIP: exact, on every GPU faiss sees"

    def make_index(self, faiss, corpus, config, seed):
        return faiss.IndexFlatIP(corpus.dim)


@SEARCH_BACKENDS.register
class IvfSearch(FaissSearch):
    name = "ivf"
    description = "faiss IndexIVFFlat: approximate, nlist lists (4 * sqrt(corpus) by default), nprobe visited"

    def make_index(self, faiss, corpus, config, seed):
        import numpy as np

        n = len(corpus)
        # faiss wants >= 39 training vectors per list; 4 * sqrt(n) lists is its own rule of thumb.
        nlist = max(1, min(config.nlist or int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(corpus.dim), corpus.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, nlist * 64), replace=False))
        index.train(corpus.take(sample).astype(np.float32))
        return index

    def tune(self, index, config):
        index.nprobe = config.nprobe


@SEARCH_BACKENDS.register
class HnswSearch(FaissSearch):
    name = "hnsw"
    description = "faiss IndexHNSWFlat: approximate graph search (hnsw_m, ef_construction, ef_search), CPU only"
    on_gpu = False

    def make_index(self, faiss, corpus, config, seed):
        index = faiss.IndexHNSWFlat(corpus.dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        return index

    def tune(self, index, config):
        index.hnsw.efSearch = config.ef_search


def choose_backend(config: SearchConfig, n_queries: int, n_corpus: int) -> str:
    """The name of the backend that runs a search of this size (``auto`` chooses)."""
    return SEARCH_BACKENDS[config.backend].resolve(config, n_queries, n_corpus).name


def build_searcher(
    corpus: EmbeddingTable,
    config: SearchConfig,
    n_queries: int,
    seed: int = 0,
    index_path: str | Path | None = None,
) -> tuple[Searcher, str]:
    """The searcher the config asks for (resolving ``auto``), and the backend's name."""
    kind = SEARCH_BACKENDS[config.backend].resolve(config, n_queries, len(corpus))
    return kind.build(corpus, config, seed, index_path), kind.name
