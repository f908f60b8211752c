"""Top-k inner-product search over cached embeddings, in bounded memory.

- :class:`ExactSearcher` streams the corpus in blocks and keeps a running top-k, so memory is one
  ``queries x block`` score matrix (``memory_mb``), never ``queries x corpus``. Exact, on GPU when there is one.
- :class:`FaissSearcher` builds a faiss index (``flat``, ``ivf``, ``hnsw``) from the corpus in blocks, moves
  flat and IVF indexes to every GPU faiss sees, and can be saved so that a resumed run skips the build.

Which one a recipe gets is :mod:`~st_retrofit.mining.search_backends`' choice (``build_searcher``).

``sentence_transformers.util.mine_hard_negatives`` holds the corpus as fp32 and, without faiss, materializes a
``min(16384, queries) x corpus`` fp32 score matrix (8 GB for 10k queries over 200k texts).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from st_retrofit.mining.cache import EmbeddingTable
    from st_retrofit.mining.config import SearchConfig
    from st_retrofit.mining.search_backends import FaissSearch

from st_retrofit.extras import require_module
from st_retrofit.files import atomic_path

logger = logging.getLogger(__name__)

# faiss on GPU returns at most this many neighbours per query.
GPU_MAX_K = 2048


class Searcher(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return fp32 scores and int64 corpus positions ``[len(queries), k]``, best first; missing results are
        ``-inf`` / ``-1``."""
        ...


def _finish(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad rows to ``k`` (``-inf`` / ``-1``) when the corpus is smaller, and order each row by score, then by id,
    so ties never depend on the backend or the block layout."""
    missing = k - scores.shape[1]
    if missing > 0:
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


class ExactSearcher:
    """Exact top-k by streaming the corpus table in blocks.

    Args:
        corpus: the corpus embeddings.
        memory_mb: budget for one fp32 score block; the corpus block size follows from it and the query count.
        device: torch device for the matrix products (``cuda`` when available, else ``cpu``).
    """

    def __init__(self, corpus: EmbeddingTable, memory_mb: int = 512, device: str | None = None) -> None:
        import torch

        self.corpus, self.memory_mb = corpus, memory_mb
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        n_queries, n_corpus = len(queries), len(self.corpus)
        k_eff = min(k, n_corpus)
        block = max(1024, self.memory_mb * 2**20 // (4 * max(n_queries, 1)))
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        best_scores = torch.full((n_queries, 0), -math.inf, device=self.device)
        best_ids = torch.full((n_queries, 0), -1, dtype=torch.long, device=self.device)
        for start in range(0, n_corpus, block):
            c = torch.from_numpy(self.corpus.read(start, start + block).astype(np.float32)).to(self.device)
            scores = q @ c.T
            top = torch.topk(scores, k=min(k_eff, scores.shape[1]), dim=1)
            del scores
            merged_scores = torch.cat([best_scores, top.values], dim=1)
            merged_ids = torch.cat([best_ids, top.indices + start], dim=1)
            keep = torch.topk(merged_scores, k=min(k_eff, merged_scores.shape[1]), dim=1).indices
            best_scores, best_ids = merged_scores.gather(1, keep), merged_ids.gather(1, keep)
        return _finish(best_scores.cpu().numpy(), best_ids.cpu().numpy(), k)


class FaissSearcher:
    """Approximate (``ivf``, ``hnsw``) or exact (``flat``) inner-product search with faiss; the index each builds
    is its :class:`~st_retrofit.mining.search_backends.FaissSearch` kind's.

    Args:
        corpus: the corpus embeddings, added to the index in blocks.
        kind: the index kind (``SEARCH_BACKENDS["ivf"]``...): it makes the index and sets its search parameters.
        config: the recipe's ``mining.search`` section.
        seed: seeds the choice of IVF training vectors.
        index_path: where the built index is saved and, on a rerun, loaded from.
    """

    def __init__(
        self,
        corpus: EmbeddingTable,
        kind: FaissSearch,
        config: SearchConfig,
        seed: int = 0,
        index_path: str | Path | None = None,
    ) -> None:
        faiss = require_module("faiss", f"mining.search.backend {kind.name}")
        self.config, self.n = config, len(corpus)
        index_path = Path(index_path) if index_path else None
        index = faiss.read_index(str(index_path)) if index_path is not None and index_path.exists() else None
        if index is not None and index.ntotal == self.n:
            logger.info("Loaded the %s index from %s", kind.name, index_path)
        else:
            index = self._build(kind, corpus, seed)
            if index_path is not None:
                index_path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(index_path) as tmp:
                    faiss.write_index(index, str(tmp))
        kind.tune(index, config)
        self.on_gpu = False
        use_gpu = config.use_gpu if config.use_gpu is not None else faiss.get_num_gpus() > 0
        if use_gpu and kind.on_gpu:
            if faiss.get_num_gpus() == 0:
                raise RuntimeError("mining.search.use_gpu is true but faiss sees no GPU (install faiss-gpu)")
            index = faiss.index_cpu_to_all_gpus(index)
            self.on_gpu = True
        self.index = index

    def _build(self, kind, corpus: EmbeddingTable, seed: int):
        import faiss

        index = kind.make_index(faiss, corpus, self.config, seed)
        for _, chunk in corpus.blocks(65536):
            index.add(chunk.astype(np.float32))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.on_gpu and k > GPU_MAX_K:
            raise ValueError(
                f"faiss on GPU returns at most {GPU_MAX_K} neighbours, but {k} are needed: lower mining.range_max, "
                "or set mining.search.use_gpu: false"
            )
        k_eff = min(k, self.n)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k_eff)
        return _finish(np.where(ids < 0, -np.inf, scores).astype(np.float32), ids.astype(np.int64), k)
