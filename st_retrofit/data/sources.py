"""Training pairs from outside the synth stage: Hub datasets and local files, mapped onto ``query``/``document``.

The recipe's ``data.sources`` list names each source (a Hub dataset with its configuration, split and revision, a
jsonl/json/parquet/csv/tsv file, or a folder saved by ``datasets``) and how its columns map onto ours. The ``mine``
stage reads :func:`training_pairs`: the synth stage's train split (unless ``data.synthetic`` is false) followed by
every source, in the columns ``query``, ``document``, ``language``, ``task`` and ``source``, so that mining can
scope negatives to a source (``mining.group_by: source``) and the collator can prompt per task.

This is the "En-Mix + Mul-Syn" of the retrofitting paper: public English retrieval sets next to the multilingual
synthetic pairs, mined with one teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from st_retrofit.config import ConfigError, keyed

if TYPE_CHECKING:
    from datasets import Dataset

    from st_retrofit.data.config import DataConfig, DataSourceConfig

from st_retrofit.dataio import local_columns, read_dataset

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("query", "document", "language", "task", "source")


def check_source_columns(config: DataSourceConfig) -> None:
    """Raise :class:`ConfigError` naming ``columns.<key>`` when a local source lacks a mapped column."""
    columns = local_columns(config.path, config.split)
    if columns is None:
        return
    for ours, theirs in {"query": "query", "document": "document", **config.columns}.items():
        if theirs not in columns:
            raise ConfigError(f"columns.{ours}", f"{config.path} has no column {theirs!r}; its columns are {columns}")


def load_source(config: DataSourceConfig, seed: int = 0) -> Dataset:
    """One source as ``query``, ``document``, ``language``, ``task``, ``source`` rows.

    ``config.columns`` maps our column names to the source's (``{query: question, document: positive}``); a
    ``language`` or ``task`` column may be mapped too, else ``config.language`` / ``config.task`` (default: the
    source's name) fill them, and without either the language is identified from the document. Rows with an empty
    query or document are dropped; ``max_rows`` keeps a seeded random sample.

    Raises:
        ConfigError: naming ``path``, ``split`` or ``columns.<name>`` (with the columns the source has).
    """
    from st_retrofit.text import identify_language, normalize_language

    data = read_dataset(config.path, config.split, config.config_name, config.revision)
    mapping = {"query": "query", "document": "document", **config.columns}
    available = data.column_names
    for ours, theirs in mapping.items():
        if theirs not in available:
            raise ConfigError(
                f"columns.{ours}", f"{config.path} has no column {theirs!r}; its columns are {available}"
            )
    if config.max_rows is not None and len(data) > config.max_rows:
        data = data.shuffle(seed=seed).select(range(config.max_rows))
    language, task = mapping.get("language"), mapping.get("task")
    fixed_language = normalize_language(config.language) if config.language else None

    def convert(row: dict) -> dict:
        query, document = (row[mapping[c]] for c in ("query", "document"))
        query = query.strip() if isinstance(query, str) else ""
        document = document.strip() if isinstance(document, str) else ""
        if language is not None and row[language]:
            code = normalize_language(row[language])
        else:
            code = fixed_language or (identify_language(document)[0] if document else "")
        return {
            "query": query,
            "document": document,
            "language": code,
            "task": str(row[task]) if task is not None else (config.task or config.name),
            "source": config.name,
        }

    rows = data.map(convert, remove_columns=available, desc=f"Reading {config.name}")
    before = len(rows)
    rows = rows.filter(lambda row: bool(row["query"]) and bool(row["document"]), desc="Dropping empty pairs")
    if len(rows) < before:
        logger.warning("%s: dropped %d rows with an empty query or document", config.name, before - len(rows))
    if not len(rows):
        raise ConfigError("path", f"{config.path} has no row with both a query and a document")
    return rows


def training_pairs(data: DataConfig, synth_dataset: str | Path | None, seed: int = 0) -> tuple[Dataset, dict]:
    """The mine stage's input: the synth stage's train split (unless ``data.synthetic`` is false) and every
    ``data.sources`` entry, and a summary ``{source: {"rows": n, "fingerprint": ...}}`` for the run manifest.

    Without sources the synth split is returned as it is (with all its columns); with sources, every part is cut
    to :data:`PAIR_COLUMNS`, synthetic rows get ``source: synthetic`` and, without a ``task`` column, ``task:
    synthetic``.

    Raises:
        ConfigError: with the key under ``data.sources[i]``.
    """
    from datasets import concatenate_datasets, load_from_disk

    parts, summary = [], {}
    if data.synthetic and synth_dataset is not None:
        synthetic = load_from_disk(str(synth_dataset))["train"]
        summary["synthetic"] = {"rows": len(synthetic), "fingerprint": synthetic._fingerprint}
        if not data.sources:
            return synthetic, summary
        if "task" not in synthetic.column_names:
            synthetic = synthetic.add_column("task", ["synthetic"] * len(synthetic))
        synthetic = synthetic.add_column("source", ["synthetic"] * len(synthetic))
        parts.append(synthetic.select_columns(list(PAIR_COLUMNS)))
    for i, source in enumerate(data.sources):
        with keyed(f"sources[{i}]"):
            rows = load_source(source, seed)
        summary[source.name] = {"rows": len(rows), "fingerprint": rows._fingerprint, "path": source.path}
        parts.append(rows.cast(parts[0].features) if parts else rows)
    if not parts:
        raise ConfigError("sources", "no training pairs: data.synthetic is false and there are no sources")
    logger.info("Training pairs: %s", ", ".join(f"{name} {info['rows']}" for name, info in summary.items()))
    return concatenate_datasets(parts), summary
