"""The ``synth`` stage: write the training and held-out pairs of a recipe to the run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from st_retrofit.synth.demo import build_demo_dataset

if TYPE_CHECKING:
    from st_retrofit.recipe import SynthConfig

logger = logging.getLogger(__name__)


def synthesize(config: SynthConfig, seed: int, output_dir: str | Path) -> Path:
    """Render the pairs that ``config`` describes and save them as a ``DatasetDict`` under ``output_dir/dataset``.

    Returns:
        The dataset folder (splits ``train`` and ``eval``).
    """
    data = build_demo_dataset(
        languages=config.languages,
        train_entities=config.train_entities,
        eval_entities=config.eval_entities,
        queries_per_document=config.queries_per_document,
        seed=seed,
    )
    path = Path(output_dir) / "dataset"
    data.save_to_disk(str(path))
    logger.info(
        "Synthesized %d train and %d held-out pairs in %d languages",
        len(data["train"]),
        len(data["eval"]),
        len(config.languages),
    )
    return path
