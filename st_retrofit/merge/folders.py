"""Merging what is on disk: run folders, model folders, Hub ids and ``offline:`` names into a new model folder whose
``merge.json`` and model card list the ingredients and their weights."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from st_retrofit.merge.core import MergeError
from st_retrofit.merge.methods import merge_method, merge_models
from st_retrofit.models.resolve import resolve_run_folder
from st_retrofit.tables import markdown_table

logger = logging.getLogger(__name__)


def merge_folders(
    inputs: Sequence[str],
    output: str | Path,
    method: str = "soup",
    weights: Sequence[float] | None = None,
    base: str | None = None,
    t: float = 0.5,
    density: float = 0.5,
    names: Sequence[str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Load ``inputs``, merge them (:func:`~st_retrofit.merge.merge_models`) and save the result to ``output``;
    ``names`` label the ingredients in ``merge.json`` and the card (default: the inputs as given).

    ``output`` must not exist yet: the model is written beside it and renamed into place when complete, so a failed
    merge leaves nothing half-written and never replaces a finished model.

    Raises:
        MergeError: the models cannot be merged as asked, or ``output`` exists.
    """
    from st_retrofit.models.resolve import load_model

    output = Path(output)
    if output.exists():
        raise MergeError(f"{output} exists; merge into a new folder (nothing is overwritten)")
    kind = merge_method(method)
    if len(inputs) < 2:
        raise MergeError(f"a merge needs two or more models, got {len(inputs)}; name the others to merge it with")
    if kind.uses_base and base is None:
        raise MergeError(f"{method} merges task vectors (model - base); name the base model (--base)")
    paths = [resolve_run_folder(name) for name in inputs]
    models = [load_model(path) for path in paths]
    base_model = load_model(resolve_run_folder(base)) if base is not None else None
    names = list(names or inputs)
    merged = merge_models(models, method, weights, base_model, t, density, names=names, parameters=parameters)

    ingredients = [
        {"model": name, "path": path, "weight": weight}
        for name, path, weight in zip(names, paths, kind.record_weights(weights, len(inputs), t), strict=True)
    ]
    record: dict[str, Any] = {"method": method, "ingredients": ingredients}
    if kind.uses_base or kind.takes_parameters:  # mergekit's methods record their base (or none) and parameters
        record["base"] = base
    if kind.takes_parameters:
        record["parameters"] = parameters or {}
    record.update({setting: {"t": t, "density": density}[setting] for setting in kind.settings})

    tmp = output.with_name(f".{output.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp))
        (tmp / "merge.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        card = tmp / "README.md"
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        card.write_text(text.rstrip() + "\n\n" + merge_card_section(record) + "\n", encoding="utf-8")
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Merged %d models (%s) into %s", len(inputs), method, output)
    return output


def merge_card_section(record: dict[str, Any]) -> str:
    """The model card's "Merge" section: the method, its settings and a table of ingredients and weights."""
    settings = ", ".join(f"{key} {record[key]}" for key in ("base", "t", "density") if record.get(key) is not None)
    if record.get("parameters"):
        settings += (", " if settings else "") + f"parameters {json.dumps(record['parameters'])}"
    rows = [[f"`{item['model']}`", f"{item['weight']:g}"] for item in record["ingredients"]]
    return "\n".join([
        "## Merge",
        "",
        f"This model is a `{record['method']}` merge{f' ({settings})' if settings else ''} of "
        f"{len(rows)} models, made with `st-retrofit merge`:",
        "",
        markdown_table(["ingredient", "weight"], rows),
    ])  # fmt: skip
