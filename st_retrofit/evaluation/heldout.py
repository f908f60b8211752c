"""Retrieval quality of a model on held-out (query, document, language) pairs, one task per language.

Each language is its own retrieval task (its queries against its documents), scored with
sentence-transformers' ``InformationRetrievalEvaluator``; the table reports nDCG@k, Recall@k and MRR@k per
language and their mean, for both models side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer


logger = logging.getLogger(__name__)

METRICS = ("ndcg", "recall", "mrr")
# Below this many held-out queries a score says little (one query scores 0 or 1): the eval stage warns and the model
# card reports no held-out metadata.
MIN_HELDOUT_QUERIES = 30


def retrieval_tasks(pairs: Dataset) -> dict[str, tuple[dict[str, str], dict[str, str], dict[str, set[str]]]]:
    """Per language: (queries, corpus, relevant documents) in the form ``InformationRetrievalEvaluator`` takes."""
    tasks: dict[str, tuple[dict, dict, dict]] = {}
    for i, row in enumerate(pairs):
        queries, corpus, relevant = tasks.setdefault(row["language"], ({}, {}, {}))
        # Documents are keyed by their text: synthesized splits repeat a passage for several queries.
        doc_id = f"{row['language']}-d{hashlib.sha1(row['document'].encode()).hexdigest()[:16]}"
        corpus[doc_id] = row["document"]
        qid = f"{row['language']}-q{i}"
        queries[qid] = row["query"]
        relevant.setdefault(qid, set()).add(doc_id)
    return tasks


def evaluate_retrieval(model: SentenceTransformer, pairs: Dataset, k: int = 10, batch_size: int = 64) -> dict:
    """Scores of ``model`` on ``pairs`` (columns ``query``, ``document``, ``language``).

    Returns:
        ``{language: {"ndcg": ..., "recall": ..., "mrr": ..., "queries": n}, ..., "mean": {...}}`` (the mean's
        ``queries`` is the total).
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    results: dict[str, dict[str, float]] = {}
    for language, (queries, corpus, relevant) in sorted(retrieval_tasks(pairs).items()):
        evaluator = InformationRetrievalEvaluator(
            queries,
            corpus,
            relevant,
            ndcg_at_k=[k],
            precision_recall_at_k=[k],
            mrr_at_k=[k],
            accuracy_at_k=[1],
            map_at_k=[k],
            batch_size=batch_size,
            name=language,
            write_csv=False,
            score_functions={"cosine": cos_sim},
        )
        scores = evaluator(model)
        results[language] = {m: float(scores[f"{language}_cosine_{m}@{k}"]) for m in METRICS}
        results[language]["queries"] = len(queries)
    results["mean"] = {m: sum(r[m] for r in results.values()) / len(results) for m in METRICS}
    results["mean"]["queries"] = sum(r["queries"] for lang, r in results.items() if lang != "mean")
    return results


def comparison_table(results: dict[str, dict], k: int) -> str:
    """A Markdown table: per language, base and retrofitted nDCG@k and Recall@k and the nDCG change."""
    from st_retrofit.tables import markdown_table

    base, tuned = results["base"], results["retrofitted"]
    headers = [
        "language",
        f"base nDCG@{k}",
        f"retrofitted nDCG@{k}",
        "Δ nDCG",
        f"base Recall@{k}",
        f"retrofitted Recall@{k}",
    ]
    rows = []
    for language in [lang for lang in base if lang != "mean"] + ["mean"]:
        b, t = base[language], tuned[language]
        rows.append([language, f"{b['ndcg']:.4f}", f"{t['ndcg']:.4f}", f"{t['ndcg'] - b['ndcg']:+.4f}",
                     f"{b['recall']:.4f}", f"{t['recall']:.4f}"])  # fmt: skip
    return markdown_table(headers, rows)


def read_beir(folder: str | Path) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant documents) of a BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
    ``qrels/test.tsv``), in the form ``InformationRetrievalEvaluator`` takes."""
    folder = Path(folder)

    def rows(name: str) -> list[dict]:
        with (folder / name).open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    corpus = {row["_id"]: " ".join(p for p in (row.get("title"), row["text"]) if p) for row in rows("corpus.jsonl")}
    queries = {row["_id"]: row["text"] for row in rows("queries.jsonl")}
    relevant: dict[str, set[str]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query, document, score = line.split("\t")
        if float(score) > 0:
            relevant.setdefault(query, set()).add(document)
    return queries, corpus, relevant


def beir_folders(paths: list[str]) -> list[Path]:
    """The BEIR folders ``paths`` name: each path is one, or a folder of them."""
    folders = []
    for path in map(Path, paths):
        folders += (
            [path] if (path / "corpus.jsonl").is_file() else sorted(p.parent for p in path.glob("*/corpus.jsonl"))
        )
    return folders


def dev_evaluator(paths: list[str], batch_size: int = 64, k: int = 10):
    """sentence-transformers' ``InformationRetrievalEvaluator`` on every BEIR folder ``paths`` name, combined by a
    ``SequentialEvaluator`` whose ``sequential_score`` is their mean nDCG@k (what the train stage selects on)."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
        SequentialEvaluator,
    )
    from sentence_transformers.util import cos_sim

    evaluators = []
    for folder in beir_folders(paths):
        queries, corpus, relevant = read_beir(folder)
        evaluators.append(
            InformationRetrievalEvaluator(
                queries, corpus, relevant, ndcg_at_k=[k], precision_recall_at_k=[k], mrr_at_k=[k], accuracy_at_k=[1],
                map_at_k=[k], batch_size=batch_size, name=folder.name, write_csv=False,
                score_functions={"cosine": cos_sim}, main_score_function="cosine",
            )
        )  # fmt: skip
    return SequentialEvaluator(evaluators, main_score_function=lambda scores: sum(scores) / len(scores))
