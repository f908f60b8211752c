"""A stage reads only what it declares, and its fingerprint covers all of it.

The field list is generated from the configuration classes: every field of every section is changed in turn, and
exactly the stages that read its section (and the stages after them) must get a new fingerprint.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from st_retrofit import pipeline
from st_retrofit.config import ConfigError, SectionView, UndeclaredSectionError
from st_retrofit.pipeline import STAGES, Stage, run_pipeline
from st_retrofit.recipe import Recipe, recipe_from_dict
from st_retrofit.registry import KindFamily, Registry

# Values for fields whose valid values a type alone does not give (only values; which stages read what is not
# listed anywhere but in the pipeline's declarations).
EXAMPLES: dict[str, list[Any]] = {
    "synth.languages": [["en", "de"]],
    "data.sources": [[{"name": "extra", "path": "org/dataset"}]],
    "mixing.group_by": [["dataset", "language"]],
    "mixing.prompts": ["query: "],
    "mining.range_max": [50],
    "synth.corpus.path": ["docs.jsonl"],
    "synth.backend.model": ["gpt-4o-mini"],
    "train.matryoshka_dims": [[32, 16]],
    "train.matryoshka_weights": [[1.0, 0.5]],
    "train.losses": [[{"loss": "GlobalOrthogonalRegularizationLoss", "weight": 0.1}]],
    "merge.method": ["soup"],
    "merge.weights": [[2.0, 1.0]],
    "eval.dimensions": [[16]],
    "eval.backends": [["onnx-int8"]],
    "mining.backend": ["onnx"],
    "merge.parameters": [{"lambda": 1.0}],
    "publish.int8": [True],
    "train.corpus_distillation": [{"loss": "OrthogonalEmbedDistillLoss"}],
}
# Values that are valid only together with another value of the same section.
COMPANIONS: dict[str, list[str]] = {
    "data.synthetic": ['data.sources=[{"name": "extra", "path": "org/dataset"}]'],
    "synth.source": ["synth.corpus.path=docs.jsonl"],
    "train.matryoshka_weights": ["train.matryoshka_dims=[32, 16]"],
    "merge.method": ["merge.models=[base]"],
    "merge.weights": ["merge.method=soup", "merge.models=[base]"],
    "merge.parameters": ["merge.method=mergekit:linear", "merge.models=[base]"],
    "publish.int8": ["eval.backends=[onnx-int8]"],
    "train.corpus_distillation": ["mining.unlabeled_per_language=10"],
}


def _unwrap(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return (options[0] if len(options) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def _registry(info: Any) -> Any:
    """The registry a field's names come from (``Registry.field()``), or ``None``."""
    inner = [m for arg in typing.get_args(info.annotation) for m in getattr(arg, "__metadata__", ())]
    return next((m.registry for m in [*info.metadata, *inner] if hasattr(m, "registry")), None)


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    fields = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        tp, optional = _unwrap(info.annotation)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and not (optional and info.default is None):
            fields += leaf_fields(tp, f"{path}.")  # a section always present: each of its fields in turn
        else:
            fields.append((path, _registry(info) or info.annotation))
    return fields


def candidates(path: str, annotation: Any, current: Any, tmp_path: Path) -> list[Any]:
    if path in EXAMPLES:
        return EXAMPLES[path]
    if path == "eval.mteb_baselines":
        return [{"other": str(tmp_path)}]
    if isinstance(annotation, Registry):  # every other registered kind (families need a variant: EXAMPLES)
        return [name for name, kind in annotation.items() if name != current and not isinstance(kind, KindFamily)]
    tp, _ = _unwrap(annotation)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return [v for v in typing.get_args(tp) if v != current]
    if tp is bool:
        return [not current]
    if tp is int:
        return [current + 1, current + 5] if current is not None else [1, 2, 16, 100]
    if tp is float:
        return [current / 2, current + 0.01] if current else [0.01, 0.5, 0.9]
    if tp is str:
        return [f"{current}-changed" if current else "changed"]
    if origin is list:
        return [list(current or []) + ["en"]]
    if origin is dict:
        return [{**(current or {}), "other": 1}, {**(current or {}), "other": "x"}]
    if origin in (typing.Union, types.UnionType):
        return ["changed", ["changed"]]
    raise AssertionError(f"no candidate value for {path} ({annotation})")


def _get(recipe: Recipe, path: str) -> Any:
    value: Any = recipe
    for part in path.split("."):
        value = getattr(value, part)
    return value


def downstream(stages: set[str]) -> set[str]:
    changed = set(stages)
    for name, stage in STAGES.items():  # in pipeline order, so one pass reaches every later stage
        if changed & set(stage.needs):
            changed.add(name)
    return changed


def test_every_field_reruns_exactly_the_stages_that_read_its_section(tiny_recipe_data, tmp_path):
    base = recipe_from_dict(tiny_recipe_data, check=False)
    before = {name: pipeline.fingerprint(base, name) for name in STAGES}
    untested = []
    fields = leaf_fields(Recipe)
    assert len(fields) > 100  # the whole tree, not a sample
    for path, annotation in fields:
        section = path.split(".")[0]
        if section in ("name", "output_dir"):
            continue  # they name the run folder, which is the run itself
        current = _get(base, path)
        changed = None
        for value in candidates(path, annotation, current, tmp_path):
            try:
                overrides = [f"{path}={json.dumps(value)}", *COMPANIONS.get(path, [])]
                recipe = recipe_from_dict(tiny_recipe_data, overrides, check=False)
            except ConfigError:
                continue
            if _get(recipe, path) != current:
                changed = recipe
                break
        if changed is None:
            untested.append(path)
            continue
        after = {name for name in STAGES if pipeline.fingerprint(changed, name) != before[name]}
        # A companion of another section (publish.int8 needs eval.backends) reruns that section's readers too.
        sections = {section} | {c.split(".")[0] for c in COMPANIONS.get(path, [])}
        readers = set(STAGES) if section == "seed" else {n for n, s in STAGES.items() if sections & set(s.sections)}
        assert after == downstream(readers), path
    assert untested == [], "give these fields a value in EXAMPLES"


def test_a_stage_that_reads_an_undeclared_section_fails(tiny_recipe_data, monkeypatch):
    def eval_reading_publish(recipe: SectionView, run_dir: Path) -> Path:
        return Path(recipe.publish.repo_id or "")

    fake = {**STAGES, "eval": Stage("eval", ("model", "eval"), ("synth", "train"), eval_reading_publish)}
    monkeypatch.setattr(pipeline, "STAGES", fake)
    view = fake["eval"].view(recipe_from_dict(tiny_recipe_data))
    assert view.eval.k == 5 and view.seed == 7
    with pytest.raises(UndeclaredSectionError, match="the eval stage read recipe.publish"):
        eval_reading_publish(view, Path("."))


def test_changing_the_repo_id_leaves_evaluation_up_to_date(tiny_recipe_data, counting_stages):
    run_pipeline(recipe_from_dict(tiny_recipe_data))
    counting_stages.clear()
    run_pipeline(recipe_from_dict(tiny_recipe_data, ["publish.repo_id=test-org/other-name"]))
    assert counting_stages == ["publish"]
