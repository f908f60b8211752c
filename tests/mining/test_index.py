from __future__ import annotations

import numpy as np
import pytest

from st_retrofit.mining import ExactSearcher, FaissSearcher
from st_retrofit.mining.cache import EmbeddingTable
from st_retrofit.mining.config import SearchConfig
from st_retrofit.mining.search_backends import SEARCH_BACKENDS, choose_backend


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """3000 normalized 32-d vectors over two cache shards."""
    folder = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16)
    np.save(folder / "a.npy", vectors[:1800])
    np.save(folder / "b.npy", vectors[1800:])
    shards = np.repeat([0, 1], [1800, 1200])
    rows = np.concatenate([np.arange(1800), np.arange(1200)])
    return EmbeddingTable(folder, ["a", "b"], shards, rows, 32), vectors.astype(np.float32)


@pytest.fixture(scope="module")
def queries():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((50, 32)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _brute_force(vectors, queries, k):
    scores = queries @ vectors.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def test_exact_search_streams_small_blocks_and_equals_brute_force(table, queries):
    corpus, vectors = table
    searcher = ExactSearcher(corpus, memory_mb=0, device="cpu")  # the 1024-row minimum block: three blocks
    scores, ids = searcher.search(queries, 20)
    expected_scores, expected_ids = _brute_force(vectors, queries, 20)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_a_table_subset_searches_only_its_rows(table, queries):
    corpus, vectors = table
    members = np.arange(0, 3000, 3)
    _, ids = ExactSearcher(corpus.subset(members), device="cpu").search(queries, 5)
    np.testing.assert_array_equal(ids, _brute_force(vectors[members], queries, 5)[1])


def test_results_are_padded_when_the_corpus_is_smaller_than_k(table, queries):
    corpus, _ = table
    small = corpus.subset(np.arange(4))
    for searcher in (ExactSearcher(small, device="cpu"), SEARCH_BACKENDS["flat"].build(small, SearchConfig())):
        scores, ids = searcher.search(queries, 6)
        assert (ids[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
        assert (ids[:, :4] >= 0).all()


def test_faiss_flat_equals_exact_search(table, queries):
    corpus, vectors = table
    _, ids = SEARCH_BACKENDS["flat"].build(corpus, SearchConfig()).search(queries, 10)
    np.testing.assert_array_equal(ids, _brute_force(vectors, queries, 10)[1])


def test_ivf_probing_every_list_is_exact_and_is_saved_for_reuse(table, queries, tmp_path, monkeypatch):
    corpus, vectors = table
    config = SearchConfig(backend="ivf", nlist=16, nprobe=16)
    _, ids = SEARCH_BACKENDS["ivf"].build(corpus, config, index_path=tmp_path / "ivf.faiss").search(queries, 10)
    np.testing.assert_array_equal(ids, _brute_force(vectors, queries, 10)[1])
    assert (tmp_path / "ivf.faiss").exists()

    def no_rebuild(*args):
        raise AssertionError("the saved index should have been loaded")

    monkeypatch.setattr(FaissSearcher, "_build", no_rebuild)
    _, again = SEARCH_BACKENDS["ivf"].build(corpus, config, index_path=tmp_path / "ivf.faiss").search(queries, 10)
    np.testing.assert_array_equal(again, ids)


def test_hnsw_finds_nearly_all_true_neighbours(table, queries):
    corpus, vectors = table
    _, ids = SEARCH_BACKENDS["hnsw"].build(corpus, SearchConfig(hnsw_m=16, ef_search=128)).search(queries, 10)
    truth = _brute_force(vectors, queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall >= 0.95


def test_auto_searches_exactly_until_queries_times_corpus_passes_the_limit():
    config = SearchConfig(exact_max_pairs=1000)
    assert choose_backend(config, 10, 100) == "exact"
    assert choose_backend(config, 10, 101) == "ivf"
    assert choose_backend(SearchConfig(backend="hnsw"), 1, 1) == "hnsw"
