"""The ``eval`` stage: base and retrofitted model on the held-out split, and on ``eval.mteb_tasks`` with mteb."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.evaluation.heldout import comparison_table, evaluate_retrieval

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from st_retrofit.config import SectionView

logger = logging.getLogger(__name__)


def eval_stage(recipe: SectionView, synth_dataset: str | Path, model_dir: str | Path, output_dir: str | Path) -> Path:
    """Evaluate base and retrofitted model; writes ``results.json`` and ``results.md``."""
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer

    from st_retrofit.models.resolve import load_model

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
    from st_retrofit.evaluation.heldout import MIN_HELDOUT_QUERIES

    queries = results["retrofitted"]["mean"]["queries"]
    if queries < MIN_HELDOUT_QUERIES:
        logger.warning(
            "The held-out split has %d queries (fewer than %d): its scores are too noisy to compare models, and the "
            "model card will not report them as metadata; hold out more documents (synth.eval_fraction)",
            queries,
            MIN_HELDOUT_QUERIES,
        )
    path = output_dir / "results.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    (output_dir / "results.md").write_text(comparison_table(results, recipe.eval.k) + "\n", encoding="utf-8")
    return path


def mteb_stage(recipe: SectionView, models: dict[str, SentenceTransformer], output_dir: Path) -> dict[str, Any]:
    """``eval.mteb_tasks`` for the ``base`` and ``retrofitted`` models (and ``eval.mteb_baselines``): mteb's results
    under ``output_dir/mteb``, the comparison as ``mteb_comparison.json`` and ``mteb_comparison.md``."""
    from st_retrofit.evaluation.mteb import comparison, read_results, resolve_tasks, run_mteb

    tasks = resolve_tasks(recipe.eval.mteb_tasks)
    names = {
        "base": recipe.model.base.replace("offline:", "offline/"),
        # The run's name: the stage reads no publish setting, so a new repo id does not make results stale.
        "retrofitted": f"st-retrofit/{recipe.name}",
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
