"""Recipes: one YAML file whose sections are the stage packages' own configurations.

=========  ============================================  ====================================
section    configuration                                 read by the stages
=========  ============================================  ====================================
model      :class:`st_retrofit.models.config.ModelConfig`     train, eval, publish
synth      :class:`st_retrofit.synth.config.SynthConfig`      synth, publish
data       :class:`st_retrofit.data.config.DataConfig`        mine, publish
mining     :class:`st_retrofit.mining.config.MiningConfig`    mine, train, publish
mixing     :class:`st_retrofit.mixing.config.MixingConfig`    train, publish
train      :class:`st_retrofit.train.config.TrainConfig`      train, publish
merge      :class:`st_retrofit.merge.config.MergeConfig`      train, publish
eval       :class:`st_retrofit.evaluation.config.EvalConfig`  eval
publish    :class:`st_retrofit.publish.config.PublishConfig`  publish
=========  ============================================  ====================================

:func:`load_recipe` checks the shape of every section (pydantic: unknown keys with a close match, types, ranges,
cross-field rules), then runs each section's ``check_environment`` (files, models, mteb tasks, trainer arguments)
before any heavy work, and reports the first problem as one line naming the key:

    mining.relative_margn: unknown key (did you mean relative_margin?)

``st-retrofit schema`` prints the JSON Schema of a recipe; the shipped recipes point editors at it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from st_retrofit.config import (
    ConfigError,
    ConfigModel,
    check_writable,
    keyed,
    load_yaml,
    require,
    resolve_local_paths,
    set_override,
    validate_section,
)
from st_retrofit.data.config import DataConfig
from st_retrofit.evaluation.config import EvalConfig
from st_retrofit.merge.config import MergeConfig
from st_retrofit.mining.config import MiningConfig
from st_retrofit.mixing.config import MixingConfig
from st_retrofit.models.config import ModelConfig
from st_retrofit.publish.config import PublishConfig
from st_retrofit.synth.config import SynthConfig
from st_retrofit.train.config import TrainConfig

SECTIONS = ("model", "synth", "data", "mining", "mixing", "train", "merge", "eval", "publish")


class Recipe(ConfigModel):
    """A whole run: synthesize -> mine -> train -> evaluate -> publish.

    Args:
        name: run name; the run folder is ``<output_dir>/<name>``.
        seed: seed for data, mining, sampling and training.
        output_dir: parent folder of run folders.
    """

    name: str = Field("retrofit", description="Run name.")
    seed: int = Field(42, description="Global seed.")
    output_dir: str = Field("runs", description="Parent folder of run folders.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    mixing: MixingConfig = Field(default_factory=MixingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        require(bool(self.name) and "/" not in self.name, "name", f"expected a folder name, got {self.name!r}")
        require(not self.publish.int8 or "onnx-int8" in self.eval.backends, "publish.int8",
                "the card states the int8 model's measured scores: add onnx-int8 to eval.backends")  # fmt: skip
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def section_hash(self, *sections: str) -> str:
        """A short content hash of the named sections plus the seed (used to skip unchanged stages)."""
        payload = {s: getattr(self, s).fingerprint_payload() for s in sections} | {"seed": self.seed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def check_environment(self) -> None:
        """Each section's own environment check (its errors under the section's key), then what spans sections:
        writable output and cache folders, and the column ``mining.group_by`` names."""
        for section in SECTIONS:
            with keyed(section):
                getattr(self, section).check_environment()
        from st_retrofit.files import cache_dir

        check_writable(self.output_dir, "output_dir")
        check_writable(cache_dir(), "ST_RETROFIT_CACHE")
        for key, folder in (("mining.cache_dir", self.mining.cache_dir), ("synth.cache_dir", self.synth.cache_dir)):
            if folder is not None:
                check_writable(folder, key)
        self.train.check_with_sections(mining=self.mining, merge=self.merge)
        columns = self.pair_columns()
        if self.mining.enabled and self.mining.group_by and self.mining.group_by not in columns:
            raise ConfigError(
                "mining.group_by",
                f"the training pairs have no column {self.mining.group_by!r}; they have {', '.join(columns)} "
                "(or set null to draw negatives from every document)",
            )

    def pair_columns(self) -> tuple[str, ...]:
        """The columns of the pairs the mine stage reads: the synth source's, or, with data sources, the common
        ones every part is cut to."""
        from st_retrofit.data.sources import PAIR_COLUMNS

        return PAIR_COLUMNS if self.data.sources else self.synth.source_entry.columns


def recipe_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, check: bool = True, base: Path | None = None
) -> Recipe:
    """Build and validate a :class:`Recipe` from a mapping; ``overrides`` are ``key.path=value`` strings.

    With ``base`` (the recipe file's folder), relative local paths that exist there are read from there; paths in
    ``overrides``, typed on a command line, stay relative to the working directory.
    """
    if not isinstance(data, dict):
        raise ConfigError("", f"a recipe must be a mapping of sections, got {type(data).__name__}")
    data = json.loads(json.dumps(data))  # deep copy; overrides must not touch the caller's mapping
    if base is not None:
        data = resolve_local_paths(Recipe, data, base)
    for assignment in overrides or []:
        set_override(data, assignment)
    recipe = validate_section(Recipe, data)
    if check:
        recipe.check_environment()
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, check: bool = True) -> Recipe:
    """Read a YAML recipe and validate it completely (see the module docstring).

    Raises:
        ConfigError: naming the key (or the file) and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError("recipe", f"{path} is a folder; name the recipe's YAML file in it")
    if not path.is_file():
        raise ConfigError("recipe", f"file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("recipe", f"{path} is not UTF-8 text") from None
    with keyed("recipe"):
        data = load_yaml(text, str(path))
    if data is None:
        raise ConfigError("recipe", f"{path} is empty; a recipe names at least its run (name: my-run)")
    return recipe_from_dict(data, overrides, check=check, base=path.parent)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file (``st-retrofit schema``)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "st-retrofit recipe"
    return schema
