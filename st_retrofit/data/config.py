"""Recipe section ``data``: training pairs besides the synth stage's (Hub datasets and local files)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from st_retrofit.config import ConfigError, ConfigModel, did_you_mean, keyed, require

MAPPABLE = ("query", "document", "language", "task")


class DataSourceConfig(ConfigModel):
    """One source of training pairs besides the synth stage (an entry of recipe section ``data.sources``).

    Args:
        name: what the rows' ``source`` column says (and their ``task`` unless set), e.g. ``msmarco``.
        path: a Hub dataset (``sentence-transformers/msmarco``), a jsonl/json/parquet/csv/tsv file or a folder
            saved by ``datasets``.
        config_name: the Hub dataset's configuration (subset).
        split: the split to read.
        revision: a Hub commit, tag or branch; pin it for a reproducible run (the manifest records the dataset
            fingerprint either way).
        columns: our column -> the source's column, for ``query``, ``document`` and optionally ``language`` and
            ``task`` (e.g. ``{query: question, document: answer}``).
        language: the language code of every row when no ``language`` column is mapped; ``null`` identifies it
            from the document.
        task: the task of every row when no ``task`` column is mapped; ``null`` = ``name``.
        max_rows: keep a seeded random sample of at most this many rows.
    """

    name: str = Field("", description="Source name (source and default task column).")
    path: str = Field("", json_schema_extra={"local_path": True}, description="Hub dataset, file or datasets folder.")
    config_name: str | None = Field(None, description="Hub dataset configuration.")
    split: str = Field("train", description="Split to read.")
    revision: str | None = Field(None, description="Hub revision to pin.")
    columns: dict[str, str] = Field(default_factory=dict, description="Our column -> source column.")
    language: str | None = Field(None, description="Language of every row.")
    task: str | None = Field(None, description="Task of every row; null = name.")
    max_rows: int | None = Field(None, ge=1, description="Rows kept, at most (seeded sample).")

    @model_validator(mode="after")
    def _check(self) -> DataSourceConfig:
        require(
            bool(self.name) and "/" not in self.name, "name", f"expected a short name like msmarco, got {self.name!r}"
        )
        require(bool(self.path), "path", "expected a Hub dataset name, a file or a datasets folder")
        for key, value in self.columns.items():
            hint = did_you_mean(key, MAPPABLE, "map")
            require(
                key in MAPPABLE,
                f"columns.{key}",
                f"not a column we read{hint.split(';')[0]}; map {', '.join(MAPPABLE)}",
            )
            require(bool(value), f"columns.{key}", f"expected a column name, got {value!r}")
        return self

    def check_environment(self) -> None:
        """A local path exists and its header has the mapped columns."""
        from st_retrofit.data.sources import check_source_columns
        from st_retrofit.dataio import check_hub_dataset, is_local

        if is_local(self.path) and not Path(self.path).expanduser().exists():
            raise ConfigError("path", f"{self.path} does not exist")
        if not is_local(self.path):
            check_hub_dataset(self.path)
        check_source_columns(self)


class DataConfig(ConfigModel):
    """Where the training pairs come from (recipe section ``data``; see :mod:`st_retrofit.data`).

    Args:
        synthetic: train on the synth stage's train split (its ``eval`` split is evaluated either way).
        sources: Hub datasets and local files added to it, each mapped onto ``query``/``document``.
    """

    synthetic: bool = Field(True, description="Use the synth stage's pairs.")
    sources: list[DataSourceConfig] = Field(default_factory=list, description="Extra pair sources.")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        names = [source.name for source in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        require(not duplicates, "sources", f"source names must be unique; repeated: {duplicates}")
        require(
            "synthetic" not in names, "sources", "'synthetic' names the synth stage's rows; call the source otherwise"
        )
        require(self.synthetic or bool(self.sources), "synthetic", "false leaves no training pairs; add sources")
        return self

    def check_environment(self) -> None:
        for i, source in enumerate(self.sources):
            with keyed(f"sources[{i}]"):
                source.check_environment()

    def local_inputs(self) -> list[str]:
        from st_retrofit.dataio import is_local

        return [source.path for source in self.sources if is_local(source.path)]
