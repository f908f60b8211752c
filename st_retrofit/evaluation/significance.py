"""Is a difference between two models larger than the luck of which queries a benchmark holds? A paired bootstrap over
queries, from the rankings mteb saves (``run_mteb(..., prediction_folder=...)``).

Small retrieval tasks move by several nDCG points when one query changes rank (the man-page test tasks hold 21-297
queries), so a mean over tasks can differ by a point between two models that are equally good. Each bootstrap
sample draws every task's queries with replacement (the same draw for both models: the comparison is paired), takes
each task's mean and then the mean over tasks, as the benchmark's headline does; the spread of the difference over
the samples is its confidence interval. Per-query nDCG@10 is scored by ``pytrec_eval``, the scorer mteb uses.
``scipy.stats.bootstrap(..., paired=True)`` resamples one pool of queries; this resamples within each task, so a
sample keeps the benchmark's tasks and their sizes (mteb reports means only).

Example::

    from st_retrofit.evaluation.significance import paired_bootstrap, per_query_scores

    ours = per_query_scores("runs/ours/predictions", tasks)       # {task: {query id: nDCG@10}}
    plain = per_query_scores("runs/plain/predictions", tasks)
    paired_bootstrap(ours, plain)  # {"difference": 0.012, "low": -0.004, "high": 0.027, "share_above": 0.93, ...}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from st_retrofit.extras import require_module


def read_qrels(folder: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """A BEIR folder's relevance judgements: ``{query id: {document id: grade}}``."""
    qrels: dict[str, dict[str, int]] = {}
    with (Path(folder) / "qrels" / f"{split}.tsv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def per_query_scores(prediction_folder: str | Path, tasks: list[Any], k: int = 10) -> dict[str, dict[str, float]]:
    """``{task name: {query id: nDCG@k}}`` for local BEIR tasks (``resolve_tasks``) from the rankings mteb saved
    under ``prediction_folder``; every judged query counts (one the model ranked nothing for scores 0)."""
    pytrec_eval = require_module("pytrec_eval", "per-query scores")
    scores = {}
    for task in tasks:
        name = task.metadata.name
        saved = json.loads((Path(prediction_folder) / f"{name}_predictions.json").read_text(encoding="utf-8"))
        rankings = saved["default"]["test"]
        qrels = read_qrels(task.metadata.dataset["path"])
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"})
        found = evaluator.evaluate({qid: {doc: float(s) for doc, s in docs.items()} for qid, docs in rankings.items()})
        scores[name] = {qid: found.get(qid, {}).get(f"ndcg_cut_{k}", 0.0) for qid in qrels}
    return scores


def paired_bootstrap(
    a: Mapping[str, Mapping[str, float]],
    b: Mapping[str, Mapping[str, float]],
    samples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """The difference ``a - b`` of the mean over tasks of each task's mean per-query score, with its bootstrap
    confidence interval at ``level`` and the share of samples in which ``a`` is ahead.

    Raises:
        ValueError: the two models were scored on other tasks or queries.
    """
    if set(a) != set(b) or any(set(a[t]) != set(b[t]) for t in a):
        raise ValueError("the two models must be scored on the same tasks and queries")
    rng = np.random.default_rng(seed)
    totals = np.zeros(samples)
    for task in sorted(a):
        queries = sorted(a[task])
        difference = np.array([a[task][q] - b[task][q] for q in queries])
        draws = rng.integers(0, len(queries), size=(samples, len(queries)))
        totals += difference[draws].mean(axis=1)
    totals /= len(a)
    observed = float(np.mean([np.mean([a[t][q] - b[t][q] for q in a[t]]) for t in a]))
    tail = (1 - level) / 2
    return {
        "difference": observed,
        "low": float(np.quantile(totals, tail)),
        "high": float(np.quantile(totals, 1 - tail)),
        "share_above": float(np.mean(totals > 0)),
        "level": level,
        "samples": samples,
        "queries": sum(len(a[t]) for t in a),
    }
