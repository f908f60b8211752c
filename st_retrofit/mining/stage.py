"""The ``mine`` stage of a recipe: pairs from the synth stage in, mined splits, corpus and report out."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from st_retrofit.config import ConfigError, keyed
from st_retrofit.files import save_dataset
from st_retrofit.mining.miner import DOCUMENT_COLUMN, QUERY_COLUMN, HardNegativeMiner
from st_retrofit.mining.report import plot_score_distributions
from st_retrofit.runfolder import MINED, MINED_UNLABELED, MINING_REPORT

if TYPE_CHECKING:
    from datasets import Dataset

    from st_retrofit.mining.config import MiningConfig

logger = logging.getLogger(__name__)


def mine_stage(
    config: MiningConfig, seed: int, pairs: Dataset, output_dir: str | Path, unlabeled: Dataset | None = None
) -> Path:
    """Mine ``pairs`` (:func:`st_retrofit.data.training_pairs`: the synth stage's train split and the data sources).

    Writes ``dataset`` (one split per group), ``corpus`` (the texts ``negative_ids`` index), ``report.json``,
    ``score_distributions.png``, and ``work/`` (shards and indexes; a rerun after a kill continues from them). With
    ``unlabeled_per_language`` it also encodes that many of ``unlabeled`` (the synth stage's unlabeled corpus rows)
    per language with the teacher and writes them to ``unlabeled/``, for ``train.corpus_distillation``.
    """
    from datasets import DatasetDict

    from st_retrofit.models.resolve import load_model

    output_dir = Path(output_dir)
    path = MINED.inside(output_dir)
    if config.enabled and config.corpus_candidates and unlabeled is None:
        raise ConfigError(
            "corpus_candidates",
            "the synth stage wrote no corpus rows to draw negatives from: only synth.source corpus writes them; set "
            "it to false",
        )
    if config.enabled and config.unlabeled_per_language != 0 and unlabeled is None:
        raise ConfigError(
            "unlabeled_per_language",
            "the synth stage wrote no unlabeled corpus rows: only synth.source corpus writes them (a synth stage run "
            "before st-retrofit 0.2 did not: st-retrofit run RECIPE --stages synth --force); otherwise set it to 0",
        )
    if not config.enabled:
        DatasetDict({"all": pairs.select_columns([QUERY_COLUMN, DOCUMENT_COLUMN])}).save_to_disk(str(path))
        MINING_REPORT.inside(output_dir).write_text(json.dumps({"enabled": False}, indent=2), encoding="utf-8")
        return path

    with keyed("teacher"):
        teacher = load_model(config.teacher)
    if config.max_seq_length is not None:
        teacher.max_seq_length = config.max_seq_length
    from st_retrofit.export.backends import ENCODER_BACKENDS

    teacher = ENCODER_BACKENDS[config.backend].prepare(teacher, config.teacher_dtype)
    cross_encoder = None
    if config.cross_encoder is not None:
        from sentence_transformers import CrossEncoder

        cross_encoder = CrossEncoder(config.cross_encoder)
    miner = HardNegativeMiner(
        teacher,
        config,
        seed=seed,
        cross_encoder=cross_encoder,
        teacher_name=config.teacher,
        cross_encoder_name=config.cross_encoder,
    )
    corpus = None
    if config.corpus_candidates:  # every corpus document a candidate (the pairs' documents always are)
        corpus = unlabeled.select_columns(["document", "language"]).rename_column("document", "text")
        if config.group_by and config.group_by not in corpus.column_names:
            raise ConfigError(
                "corpus_candidates", f"the corpus rows have no {config.group_by!r} column to group negatives by"
            )
    result = miner.mine(pairs, corpus=corpus, output_dir=output_dir / "work")
    if config.unlabeled_per_language != 0:
        rows = per_language(unlabeled, config.unlabeled_per_language, seed)
        for role in ("query", "document"):
            miner.encode(rows[role], role)
        save_dataset(rows, MINED_UNLABELED.inside(output_dir))
        result.report["unlabeled"] = {"rows": len(rows), "languages": dict(Counter(rows["language"]))}
    # What the student learns from: cards and releases name it, its licence and its verified weights.
    from st_retrofit.models.resolve import model_source

    result.report["teacher"]["source"] = model_source(config.teacher)
    result.dataset.save_to_disk(str(path))
    result.corpus.save_to_disk(str(output_dir / "corpus"))
    MINING_REPORT.inside(output_dir).write_text(
        json.dumps(result.report, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    plot_score_distributions(result.report, output_dir / "score_distributions.png")
    report = result.report
    logger.info(
        "Mining: %d of %d rows kept (%d short of negatives); removed by rule: %s; report in %s",
        report["rows_out"],
        report["rows_in"],
        report["rows_short_of_negatives"],
        report["removed"] or "none",
        MINING_REPORT.inside(output_dir),
    )
    return path


def per_language(rows: Dataset, cap: int | None, seed: int) -> Dataset:
    """At most ``cap`` rows of each ``language`` (all with ``None``), drawn with ``seed``, in their input order."""
    if cap is None:
        return rows
    by_language: dict[str, list[int]] = {}
    for i, language in enumerate(rows["language"]):
        by_language.setdefault(language, []).append(i)
    rng = random.Random(seed)
    keep = [
        i for members in by_language.values() for i in (members if len(members) <= cap else rng.sample(members, cap))
    ]
    return rows.select(sorted(keep))
