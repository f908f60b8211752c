"""Reading the user's corpus: jsonl, json, parquet, csv/tsv files, a folder saved by ``datasets``, a Hub dataset,
or a ``Dataset`` in memory, into the columns the generator reads: ``id``, ``text``, ``title``, ``language``, ``parallel_id``."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from st_retrofit.text import identify_language, normalize_language

if TYPE_CHECKING:
    from datasets import Dataset

from st_retrofit.config import ConfigError

logger = logging.getLogger(__name__)

OPTIONAL_DEFAULTS = {
    "title_column": "title",
    "language_column": "language",
    "id_column": "id",
    "parallel_column": None,
}


def _read(source: str | Path, split: str, config_name: str | None) -> Dataset:
    from st_retrofit.dataio import read_dataset

    return read_dataset(source, split, config_name)


def _read_per_language(source: str, split: str, config_name: str, languages: list[str], limit: int | None):
    """One Hub configuration per language (``wikimedia/wikipedia`` with ``20231101.{language}``), each tagged with
    its language; with ``limit``, only the first ``limit`` rows of each are streamed instead of downloading it."""
    import datasets

    from st_retrofit.dataio import check_hub_dataset

    check_hub_dataset(source, reading=True)
    parts = []
    for language in languages:
        name = config_name.format(language=language)
        try:
            if limit is None:
                part = datasets.load_dataset(source, name, split=split)
            else:
                stream = datasets.load_dataset(source, name, split=split, streaming=True).take(limit)
                part = datasets.Dataset.from_list(list(stream))
        except Exception as exc:  # the Hub client raises many types; all mean "cannot read this configuration"
            raise ConfigError(
                "config_name", f"cannot load {source!r} configuration {name!r} ({type(exc).__name__}: {exc})"
            ) from None
        column = "language" if "language" not in part.column_names else "language_code"
        parts.append(part.add_column(column, [language] * len(part)))
    return datasets.concatenate_datasets(parts)


def load_corpus(
    source: str | Path | Dataset,
    text_column: str = "text",
    title_column: str | None = "title",
    language_column: str | None = "language",
    id_column: str | None = "id",
    split: str = "train",
    config_name: str | None = None,
    languages: list[str] | None = None,
    max_documents: int | None = None,
    parallel_column: str | None = None,
) -> Dataset:
    """The corpus as a ``Dataset`` of ``id``, ``text``, ``title``, ``language``, ``parallel_id``.

    Missing optional columns are filled: no ``title`` column gives empty titles, no ``id`` column gives a hash of
    the text, and no ``language`` column (or an empty value) has the language identified from the text. Language
    codes are normalized (``deu-Latn`` -> ``de``); ``languages`` keeps only those. Empty texts are dropped.
    ``parallel_column`` names a column whose equal values mark translations of one document (a page name, a
    message id); it becomes ``parallel_id`` (empty without it), which the ``parallel`` templates pair across.

    A Hub ``config_name`` with a ``{language}`` placeholder (``20231101.{language}`` for ``wikimedia/wikipedia``)
    reads one configuration per entry of ``languages``, tagged with it; ``max_documents`` then counts per language
    and only that many rows of each are streamed.

    Raises:
        ConfigError: naming the setting at fault (a missing column lists the columns there are).
    """
    from datasets import Dataset

    if isinstance(source, Dataset):
        data = source
    elif config_name and "{language}" in config_name:
        if not languages:
            raise ConfigError(
                "languages", f"config_name {config_name!r} reads one configuration per language; list them"
            )
        data = _read_per_language(str(source), split, config_name, languages, max_documents)
        language_column = "language" if "language_code" not in data.column_names else "language_code"
    else:
        data = _read(source, split, config_name)
    columns = data.column_names
    if text_column not in columns:
        raise ConfigError("text_column", f"the corpus has no column {text_column!r}; its columns are {columns}")
    # An optional column under its default name may be absent; a name the user chose must exist.
    optional = (("title_column", title_column), ("language_column", language_column), ("id_column", id_column),
                ("parallel_column", parallel_column))  # fmt: skip
    for key, name in optional:
        if name is not None and name not in columns and name != OPTIONAL_DEFAULTS[key]:
            raise ConfigError(key, f"the corpus has no column {name!r}; its columns are {columns} (or set null)")
    has = {name: name is not None and name in columns for _, name in optional}

    def convert(row: dict) -> dict:
        text = row[text_column]
        text = text.strip() if isinstance(text, str) else ""
        language = row[language_column] if has[language_column] else None
        language = normalize_language(language) if language else (identify_language(text)[0] if text else "")
        doc_id = row[id_column] if has[id_column] else None
        return {
            "id": str(doc_id) if doc_id is not None else hashlib.sha1(text.encode()).hexdigest()[:16],
            "text": text,
            "title": (row[title_column] or "").strip() if has[title_column] else "",
            "language": language,
            "parallel_id": str(row[parallel_column] or "") if has[parallel_column] else "",
        }

    rows = data.map(convert, remove_columns=columns, desc="Reading corpus")
    before = len(rows)
    rows = rows.filter(lambda row: bool(row["text"]), desc="Dropping empty texts")
    if len(rows) < before:
        logger.warning("Dropped %d corpus rows with an empty %r", before - len(rows), text_column)
    if languages:
        wanted = {normalize_language(code) for code in languages}
        rows = rows.filter(lambda row: row["language"] in wanted, desc="Selecting languages")
        if not len(rows):
            raise ConfigError("languages", f"no corpus row is in {sorted(wanted)}")
    if max_documents is not None and len(rows) > max_documents and not (config_name and "{language}" in config_name):
        rows = rows.select(range(max_documents))
    if not len(rows):
        raise ConfigError("path", "the corpus has no non-empty text")
    return rows
