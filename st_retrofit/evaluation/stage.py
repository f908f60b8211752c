"""The ``eval`` stage: base and retrofitted model on the held-out split, and on ``eval.mteb_tasks`` with mteb."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.evaluation.heldout import comparison_table, evaluate_retrieval
from st_retrofit.runfolder import EVAL_RESULTS, EVAL_TABLE, MTEB_COMPARISON

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
    dims = recipe.eval.dimensions if recipe.eval.dimensions is not None else recipe.train.matryoshka_dims
    sizes = smaller_sizes(sorted(dims, reverse=True), models["retrofitted"])
    if sizes:
        results["dimensions"] = {}
        for size in sizes:
            results["dimensions"][str(size)] = {}
            for label, model in models.items():
                logger.info("Evaluating the %s model at %d dimensions", label, size)
                with truncated(model, size):
                    scores = evaluate_retrieval(model, pairs, k=recipe.eval.k, batch_size=recipe.eval.batch_size)
                results["dimensions"][str(size)][label] = scores["mean"]
    if recipe.eval.mteb_tasks:
        results["mteb"] = mteb_stage(recipe, models, output_dir, sizes)
    if recipe.eval.backends:
        results["backends"] = backend_scores(recipe, models["retrofitted"], pairs, output_dir, results)
    from st_retrofit.evaluation.heldout import MIN_HELDOUT_QUERIES

    queries = results["retrofitted"]["mean"]["queries"]
    if queries < MIN_HELDOUT_QUERIES:
        logger.warning(
            "The held-out split has %d queries (fewer than %d): its scores are too noisy to compare models, and the "
            "model card will not report them as metadata; hold out more documents (synth.eval_fraction)",
            queries,
            MIN_HELDOUT_QUERIES,
        )
    path = EVAL_RESULTS.inside(output_dir)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    table = comparison_table(results, recipe.eval.k)
    if sizes:
        table += "\n\n" + dimensions_table(results, recipe.eval.k)
    if recipe.eval.backends:
        table += "\n\n" + backends_table(results, recipe.eval.k)
    EVAL_TABLE.inside(output_dir).write_text(table + "\n", encoding="utf-8")
    return path


def smaller_sizes(matryoshka_dims: list[int], model: SentenceTransformer) -> list[int]:
    """The Matryoshka sizes below the model's full embedding size (the full size is the main result)."""
    full = model.get_embedding_dimension()
    return [size for size in matryoshka_dims if full is None or size < full]


@contextlib.contextmanager
def truncated(model: SentenceTransformer, size: int) -> Iterator[None]:
    """``model`` encoding embeddings cut to ``size`` (sentence-transformers' ``truncate_dim``) inside the block."""
    before = model.truncate_dim
    model.truncate_dim = size
    try:
        yield
    finally:
        model.truncate_dim = before


def dimensions_table(results: dict[str, Any], k: int) -> str:
    """Markdown: held-out nDCG@k of base and retrofitted model at each Matryoshka size, with the retrofitted
    model's share of its full-size score."""
    from st_retrofit.tables import markdown_table

    full = results["retrofitted"]["mean"]["ndcg"]
    rows = [["full", f"{results['base']['mean']['ndcg']:.4f}", f"{full:.4f}", "100.0%"]]
    for size, scores in results["dimensions"].items():
        tuned = scores["retrofitted"]["ndcg"]
        rows.append(
            [size, f"{scores['base']['ndcg']:.4f}", f"{tuned:.4f}", f"{100 * tuned / full:.1f}%" if full else "-"]
        )
    return markdown_table(["dimensions", f"base nDCG@{k}", f"retrofitted nDCG@{k}", "share of full size"], rows)


def backend_scores(
    recipe: SectionView, model: SentenceTransformer, pairs: Any, output_dir: Path, results: dict[str, Any]
) -> dict[str, Any]:
    """The retrofitted model run by each of ``eval.backends``: its held-out mean nDCG@k and mteb scores beside the
    torch model's, and the loss (torch minus backend; positive = the backend scores lower)."""
    from st_retrofit.export.backends import ENCODER_BACKENDS

    out: dict[str, Any] = {}
    torch_mean = results["retrofitted"]["mean"]["ndcg"]
    torch_mteb = _retrofitted_mteb(results)
    for name in recipe.eval.backends:
        logger.info("Evaluating the retrofitted model on the %s backend", name)
        encoder = ENCODER_BACKENDS[name].prepare(model)
        heldout = evaluate_retrieval(encoder, pairs, k=recipe.eval.k, batch_size=recipe.eval.batch_size)["mean"]
        entry = {"heldout_ndcg": heldout["ndcg"], "heldout_loss": round(torch_mean - heldout["ndcg"], 6)}
        if recipe.eval.mteb_tasks:
            from st_retrofit.evaluation.mteb import resolve_tasks, run_mteb

            scores = run_mteb(
                encoder, f"st-retrofit/{recipe.name}-{name}", resolve_tasks(recipe.eval.mteb_tasks),
                output_dir / "mteb", recipe.eval.batch_size,
            )  # fmt: skip
            entry["mteb"] = scores
            if torch_mteb:
                shared = sorted(set(scores) & set(torch_mteb))
                entry["mteb_mean"] = sum(scores[t] for t in shared) / len(shared)
                entry["mteb_loss"] = sum(torch_mteb[t] - scores[t] for t in shared) / len(shared)
        out[name] = entry
    return out


def _retrofitted_mteb(results: dict[str, Any]) -> dict[str, float]:
    rows = (results.get("mteb") or {}).get("rows", [])
    return {row["task"]: row["retrofitted"] for row in rows if row.get("retrofitted") is not None}


def backends_table(results: dict[str, Any], k: int) -> str:
    """Markdown: the retrofitted model's scores per encoder backend, torch first."""
    from st_retrofit.tables import markdown_table

    mteb = "mteb_mean" in next(iter(results["backends"].values()))
    header = ["backend", f"held-out nDCG@{k}", "loss", *(["mteb mean", "loss"] if mteb else [])]
    torch_mteb = _retrofitted_mteb(results) if mteb else None
    rows = [["torch", f"{results['retrofitted']['mean']['ndcg']:.4f}", "", *(
        [f"{sum(torch_mteb.values()) / len(torch_mteb):.4f}", ""] if torch_mteb else [])]]  # fmt: skip
    for name, entry in results["backends"].items():
        row = [name, f"{entry['heldout_ndcg']:.4f}", f"{entry['heldout_loss']:+.4f}"]
        if mteb:
            row += [f"{entry['mteb_mean']:.4f}", f"{entry['mteb_loss']:+.4f}"]
        rows.append(row)
    return "**Encoder backends** (the retrofitted model; loss = torch minus the backend):\n\n" + markdown_table(
        header, rows
    )


def mteb_stage(
    recipe: SectionView, models: dict[str, SentenceTransformer], output_dir: Path, sizes: list[int] | None = None
) -> dict[str, Any]:
    """``eval.mteb_tasks`` for the ``base`` and ``retrofitted`` models (and ``eval.mteb_baselines``): mteb's results
    under ``output_dir/mteb``, the comparison as ``mteb_comparison.json`` and ``mteb_comparison.md``. With Matryoshka
    ``sizes``, both models are also scored with embeddings cut to each (``dimensions`` in the comparison: the mean
    main score and the per-task scores)."""
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
    if sizes:
        data["dimensions"] = {}
        for size in sizes:
            per_model = {}
            for label, model in models.items():
                with truncated(model, size):
                    per_model[label] = run_mteb(
                        model, f"{names[label]}-d{size}", tasks, output_dir / "mteb", recipe.eval.batch_size
                    )
            shared = sorted(set.intersection(*(set(s) for s in per_model.values())))
            data["dimensions"][str(size)] = {
                label: {"mean": sum(s[t] for t in shared) / len(shared), "tasks": s} for label, s in per_model.items()
            }
    data["main_scores"] = {task.metadata.name: task.metadata.main_score for task in tasks}
    data["task_types"] = {task.metadata.name: task.metadata.type for task in tasks}
    MTEB_COMPARISON.inside(output_dir).write_text(json.dumps(data, indent=2), encoding="utf-8")
    (output_dir / "mteb_comparison.md").write_text(table + "\n", encoding="utf-8")
    return data
