"""``st-retrofit evaluate``: mteb tasks for any models, without a recipe (run folders, model folders, Hub ids,
``offline:`` names), with the eval stage's results layout and comparison table."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from st_retrofit.config import ConfigError, keyed

logger = logging.getLogger(__name__)


def model_label(name: str) -> str:
    """How mteb's results folder names a model: ``org/name`` ids stay, paths and ``offline:`` names become one
    segment (``runs/manpages`` -> ``local/runs__manpages``)."""
    if name.startswith("offline:"):
        return "offline/" + name.removeprefix("offline:")
    path = Path(name).expanduser()
    if path.exists():
        parts = [p for p in path.resolve().parts[-2:] if p not in ("/", "")]
        return "local/" + "__".join(parts)
    return name


def evaluate_models(
    models: Sequence[str],
    tasks: Sequence[str],
    output_dir: str | Path,
    batch_size: int = 32,
    max_seq_length: int | None = None,
    dimensions: Sequence[int] = (),
    backends: Sequence[str] = (),
) -> dict[str, Any]:
    """Score every model on every task with mteb; the first model is the reference of the table's last column.

    Writes mteb's own results under ``output_dir/mteb/results/`` and the comparison as ``mteb_comparison.json`` and
    ``mteb_comparison.md`` (one row per task, one column per model), as the eval stage does.

    Args:
        models: run folders (their ``train/model``), model folders, Hub ids or ``offline:`` names.
        tasks: mteb task or benchmark names, local BEIR folders, or folders of them (as ``eval.mteb_tasks``).
        output_dir: where results go.
        batch_size: encoding batch size.
        max_seq_length: cut texts to this many tokens (the models' own limit by default).
        dimensions: also score every model with its embeddings cut to each size (``truncate_dim``), as a column
            ``<model> @<size>`` beside the model's own.
        backends: also score every model run by each of these encoder backends (``onnx``, ``onnx-int8``; the
            registry of :mod:`st_retrofit.export.backends`), as a column ``<model> [<backend>]``: what int8 costs.

    Raises:
        ConfigError: a model or task that cannot be found, named with its position.
    """
    from st_retrofit.evaluation.mteb import comparison, resolve_tasks, run_mteb
    from st_retrofit.evaluation.stage import truncated
    from st_retrofit.models.resolve import check_model_name, load_model, resolve_run_folder

    if len(set(models)) != len(models):
        raise ConfigError("models", f"a model is listed twice: {list(models)}")
    paths = [resolve_run_folder(name) for name in models]
    for i, path in enumerate(paths):  # every name is checked before the first model is scored
        try:
            check_model_name(path)
        except ConfigError as exc:
            raise ConfigError(f"models[{i}]", exc.message) from None
    try:
        task_objects = resolve_tasks(list(tasks))
    except ConfigError as exc:
        raise ConfigError("--tasks", exc.message) from None
    from st_retrofit.export.backends import ENCODER_BACKENDS

    for backend in backends:
        with keyed("--backends"):
            ENCODER_BACKENDS[backend].check_environment()
    output_dir = Path(output_dir)
    scores: dict[str, dict[str, float]] = {}
    for name, path in zip(models, paths, strict=True):
        model = load_model(path)
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        logger.info("mteb: %d task(s) for %s", len(task_objects), name)
        scores[name] = run_mteb(model, model_label(name), task_objects, output_dir / "mteb", batch_size)
        full = model.get_embedding_dimension()
        for size in sorted(dimensions, reverse=True):
            if full is not None and size >= full:
                raise ConfigError("--dimensions", f"{name} has {full} dimensions; cut sizes must be smaller")
            with truncated(model, size):
                label = f"{model_label(name)}-d{size}"
                scores[f"{name} @{size}"] = run_mteb(model, label, task_objects, output_dir / "mteb", batch_size)
        for backend in backends:
            logger.info("mteb: %d task(s) for %s on the %s backend", len(task_objects), name, backend)
            encoder = ENCODER_BACKENDS[backend].prepare(model)
            label = f"{model_label(name)}-{backend}"
            scores[f"{name} [{backend}]"] = run_mteb(encoder, label, task_objects, output_dir / "mteb", batch_size)
    data, table = comparison(scores)
    data["main_scores"] = {task.metadata.name: task.metadata.main_score for task in task_objects}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "mteb_comparison.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    (output_dir / "mteb_comparison.md").write_text(table + "\n", encoding="utf-8")
    return data
