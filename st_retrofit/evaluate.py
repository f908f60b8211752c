"""The ``eval`` stage: retrieval quality of the base and the retrofitted model on the held-out split.

Each language is its own retrieval task (its queries against its documents), scored with
sentence-transformers' ``InformationRetrievalEvaluator``; the table reports nDCG@k, Recall@k and MRR@k per
language and their mean, for both models side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from st_retrofit.recipe import Recipe

logger = logging.getLogger(__name__)

METRICS = ("ndcg", "recall", "mrr")


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
        ``{language: {"ndcg": ..., "recall": ..., "mrr": ...}, ..., "mean": {...}}``.
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
    results["mean"] = {m: sum(r[m] for r in results.values()) / len(results) for m in METRICS}
    return results


def comparison_table(results: dict[str, dict], k: int) -> str:
    """A Markdown table: per language, base and retrofitted nDCG@k and Recall@k and the nDCG change."""
    base, tuned = results["base"], results["retrofitted"]
    lines = [
        f"| language | base nDCG@{k} | retrofitted nDCG@{k} | Δ nDCG | base Recall@{k} | retrofitted Recall@{k} |",
        "|---|---|---|---|---|---|",
    ]
    for language in [lang for lang in base if lang != "mean"] + ["mean"]:
        b, t = base[language], tuned[language]
        lines.append(
            f"| {language} | {b['ndcg']:.4f} | {t['ndcg']:.4f} | {t['ndcg'] - b['ndcg']:+.4f} "
            f"| {b['recall']:.4f} | {t['recall']:.4f} |"
        )
    return "\n".join(lines)


def eval_stage(recipe: Recipe, synth_dataset: str | Path, model_dir: str | Path, output_dir: str | Path) -> Path:
    """Evaluate base and retrofitted model; writes ``results.json`` and ``results.md``."""
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer

    from st_retrofit.models import load_model

    output_dir = Path(output_dir)
    pairs = load_from_disk(str(synth_dataset))["eval"]
    results: dict[str, Any] = {"k": recipe.eval.k, "base_model": recipe.model.base}
    models = {"base": load_model(recipe.model.base), "retrofitted": SentenceTransformer(str(model_dir))}
    for label, model in models.items():
        if recipe.model.max_seq_length is not None:
            model.max_seq_length = recipe.model.max_seq_length
        logger.info("Evaluating the %s model", label)
        results[label] = evaluate_retrieval(model, pairs, k=recipe.eval.k, batch_size=recipe.eval.batch_size)
    if recipe.eval.mteb_tasks:
        results["mteb"] = mteb_stage(recipe, models, output_dir)
    path = output_dir / "results.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    (output_dir / "results.md").write_text(comparison_table(results, recipe.eval.k) + "\n", encoding="utf-8")
    return path


def mteb_stage(recipe: Recipe, models: dict[str, SentenceTransformer], output_dir: Path) -> dict[str, Any]:
    """``eval.mteb_tasks`` for the ``base`` and ``retrofitted`` models (and ``eval.mteb_baselines``): mteb's results
    under ``output_dir/mteb``, the comparison as ``mteb_comparison.json`` and ``mteb_comparison.md``."""
    from st_retrofit.mteb_eval import comparison, read_results, resolve_tasks, run_mteb

    tasks = resolve_tasks(recipe.eval.mteb_tasks)
    names = {
        "base": recipe.model.base.replace("offline:", "offline/"),
        "retrofitted": recipe.publish.repo_id or f"st-retrofit/{recipe.name}",
    }
    scores = {}
    for label, model in models.items():
        logger.info("mteb: %d task(s) for the %s model", len(tasks), label)
        scores[label] = run_mteb(model, names[label], tasks, output_dir / "mteb", recipe.eval.batch_size)
    # Baselines between the two, so that the last column's change is retrofitted against base.
    baselines = {label: read_results(folder) for label, folder in recipe.eval.mteb_baselines.items()}
    data, table = comparison({"base": scores["base"], **baselines, "retrofitted": scores["retrofitted"]})
    data["main_scores"] = {task.metadata.name: task.metadata.main_score for task in tasks}
    data["task_types"] = {task.metadata.name: task.metadata.type for task in tasks}
    (output_dir / "mteb_comparison.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    (output_dir / "mteb_comparison.md").write_text(table + "\n", encoding="utf-8")
    return data
