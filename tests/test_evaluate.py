from __future__ import annotations

import pytest

from st_retrofit.evaluation.heldout import comparison_table, evaluate_retrieval, retrieval_tasks
from st_retrofit.synth import build_demo_dataset


@pytest.fixture(scope="module")
def held_out():
    return build_demo_dataset(languages=["en", "zh"], train_entities=2, eval_entities=6, queries_per_document=2)[
        "eval"
    ]


def test_each_language_is_its_own_task_with_one_relevant_document(held_out):
    tasks = retrieval_tasks(held_out)
    assert set(tasks) == {"en", "zh"}
    queries, corpus, relevant = tasks["zh"]
    assert len(corpus) == 6 and len(queries) == 12
    assert all(len(docs) == 1 and next(iter(docs)) in corpus for docs in relevant.values())


def test_scores_are_in_range_and_mean_is_the_average(tiny_model, held_out):
    results = evaluate_retrieval(tiny_model, held_out, k=5)
    assert set(results) == {"en", "zh", "mean"}
    for scores in results.values():
        assert all(0.0 <= scores[m] <= 1.0 for m in ("ndcg", "recall", "mrr"))
    assert results["mean"]["ndcg"] == pytest.approx((results["en"]["ndcg"] + results["zh"]["ndcg"]) / 2)


def test_recall_is_one_when_k_covers_the_whole_corpus(tiny_model, held_out):
    results = evaluate_retrieval(tiny_model, held_out, k=6)
    assert results["en"]["recall"] == pytest.approx(1.0)


def test_comparison_table_shows_the_change():
    base = {"en": {"ndcg": 0.5, "recall": 0.6, "mrr": 0.4}, "mean": {"ndcg": 0.5, "recall": 0.6, "mrr": 0.4}}
    tuned = {"en": {"ndcg": 0.7, "recall": 0.9, "mrr": 0.6}, "mean": {"ndcg": 0.7, "recall": 0.9, "mrr": 0.6}}
    table = comparison_table({"base": base, "retrofitted": tuned}, k=10)
    assert "| en | 0.5000 | 0.7000 | +0.2000 | 0.6000 | 0.9000 |" in table
    assert table.splitlines()[-1].startswith("| mean |")
