"""The ``mine`` stage: hard negatives for (query, document) pairs, scored by a teacher model.

This first version delegates retrieval and filtering to ``sentence_transformers.util.mine_hard_negatives`` and adds
what a retrofitting run needs around it:

- the teacher is its own model, named in the recipe and recorded in the report;
- negatives are drawn within groups (``group_by: language``), so a query never gets a translation of its own
  document as a negative, and each group is written as its own split: the stock trainer then draws every batch
  from one split, so in-batch negatives stay in the query's group too;
- the run is seeded (``mine_hard_negatives`` samples with the global ``random`` module);
- embeddings are cached per teacher (the built-in cache key ignores which model made them when the model was
  loaded from a path).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer

    from st_retrofit.recipe import MiningConfig

logger = logging.getLogger(__name__)

QUERY_COLUMN, DOCUMENT_COLUMN, LABEL_COLUMN = "query", "document", "label"


def negative_columns(num_negatives: int) -> list[str]:
    return [f"negative_{i}" for i in range(1, num_negatives + 1)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def mine_negatives(
    pairs: Dataset,
    teacher: SentenceTransformer,
    config: MiningConfig,
    seed: int,
    cache_folder: str | Path | None = None,
) -> tuple[DatasetDict, dict[str, Any]]:
    """Add ``config.num_negatives`` hard negatives to every (query, document) pair.

    Args:
        pairs: a dataset with ``query`` and ``document`` columns, plus the ``config.group_by`` column if set.
        teacher: the model whose scores rank the candidates.
        config: the recipe's mining section.
        seed: seeds the sampling of negatives.
        cache_folder: where query and corpus embeddings are cached; use one folder per teacher.

    Returns:
        A ``DatasetDict`` with one split per group (``all`` without ``group_by``), columns ``query``, ``document``,
        ``negative_1`` ... ``negative_n`` and ``label`` (the teacher's scores of the positive and each negative;
        rows short of negatives are dropped), and a report with per-group counts and score statistics.
    """
    from datasets import DatasetDict
    from sentence_transformers.util import mine_hard_negatives

    for column in (QUERY_COLUMN, DOCUMENT_COLUMN) + ((config.group_by,) if config.group_by else ()):
        if column not in pairs.column_names:
            raise ValueError(f"mining: the pairs have no column {column!r} (columns: {pairs.column_names})")

    groups = sorted(set(pairs[config.group_by])) if config.group_by else [None]
    mined_groups, report_groups = {}, {}
    for group in groups:
        subset = (
            pairs if group is None else pairs.filter(lambda g, group=group: g == group, input_columns=config.group_by)
        )
        subset = subset.select_columns([QUERY_COLUMN, DOCUMENT_COLUMN])
        corpus = sorted(set(subset[DOCUMENT_COLUMN]))
        random.seed(seed)
        mined = mine_hard_negatives(
            subset,
            teacher,
            anchor_column_name=QUERY_COLUMN,
            positive_column_name=DOCUMENT_COLUMN,
            corpus=corpus,
            num_negatives=config.num_negatives,
            range_min=config.range_min,
            range_max=config.range_max,
            relative_margin=config.relative_margin,
            sampling_strategy="top",
            output_format="n-tuple",
            output_scores=True,
            batch_size=config.batch_size,
            use_faiss=True,
            verbose=False,
            cache_folder=str(cache_folder) if cache_folder else None,
        )
        scores = np.asarray(mined["scores"], dtype=np.float32).reshape(len(mined), -1) if len(mined) else None
        key = str(group) if group is not None else "all"
        report_groups[key] = {
            "pairs": len(subset),
            "corpus": len(corpus),
            "kept": len(mined),
            "dropped_short_of_negatives": len(subset) - len(mined),
            "mean_positive_score": float(scores[:, 0].mean()) if scores is not None else None,
            "mean_negative_score": float(scores[:, 1:].mean()) if scores is not None else None,
        }
        # The teacher's scores (positive, negative_1, ...) become the label column: losses that distill or mask
        # with a teacher read them, the others ignore labels.
        mined = mined.rename_column("scores", LABEL_COLUMN)
        mined_groups[key] = mined.shuffle(seed=seed).flatten_indices()

    mined = DatasetDict(mined_groups)
    rows_out = sum(len(split) for split in mined.values())
    report = {
        "rows_in": len(pairs),
        "rows_out": rows_out,
        "num_negatives": config.num_negatives,
        "group_by": config.group_by,
        "groups": report_groups,
    }
    logger.info("Mined %d of %d rows with %d negatives each", rows_out, len(pairs), config.num_negatives)
    return mined, report


def mine_stage(config: MiningConfig, seed: int, synth_dataset: str | Path, output_dir: str | Path) -> Path:
    """Run mining on the train split written by the synth stage; saves ``dataset`` (one split per group) and
    ``report.json``."""
    import json

    from datasets import load_from_disk

    from st_retrofit.models import load_model

    output_dir = Path(output_dir)
    pairs = load_from_disk(str(synth_dataset))["train"]
    if not config.enabled:
        from datasets import DatasetDict

        dataset = DatasetDict({"all": pairs.select_columns([QUERY_COLUMN, DOCUMENT_COLUMN])})
        report = {"enabled": False}
    else:
        teacher = load_model(config.teacher)
        cache = output_dir / "embedding_cache" / _slug(config.teacher)
        dataset, report = mine_negatives(pairs, teacher, config, seed, cache_folder=cache)
        report["teacher"] = config.teacher
    path = output_dir / "dataset"
    dataset.save_to_disk(str(path))
    (output_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return path
