"""Run the stages of a recipe in order: synth -> mine -> train -> eval -> publish.

Every stage writes into its own folder of the run folder and records a ``stage.json`` with a fingerprint: the hash
of the recipe sections it reads plus the fingerprints of the stages it depends on. A stage whose finished
fingerprint matches is skipped; a stage that was interrupted with the same fingerprint is resumed in place (the
trainer continues from its last checkpoint, the miner reuses its embedding cache); a stage whose inputs changed
starts from an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from st_retrofit.recipe import Recipe, RecipeError, save_recipe

logger = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run (for example, the stage it reads from has not run)."""


@dataclass(frozen=True)
class Stage:
    """One pipeline step: the recipe sections it reads, the stages it reads from, and how to run it.

    ``uses`` are stages read when they have run (publish takes evaluation results when there are any); their
    fingerprints count as inputs then, so new results make the stage run again.
    """

    name: str
    sections: tuple[str, ...]
    needs: tuple[str, ...]
    run: Callable[[Recipe, Path], Path]
    uses: tuple[str, ...] = ()


def _synth(recipe: Recipe, run_dir: Path) -> Path:
    from st_retrofit.synth import CorpusError, SynthBackendError, SynthSettingError, synthesize

    try:
        return synthesize(recipe.synth, recipe.seed, run_dir / "synth")
    except SynthSettingError as exc:
        raise RecipeError(f"synth.{exc.key}", exc.message) from None
    except CorpusError as exc:
        raise RecipeError(f"synth.corpus.{exc.key}", exc.message) from None
    except SynthBackendError as exc:
        raise StageError(f"synth: {exc}") from None


def _mine(recipe: Recipe, run_dir: Path) -> Path:
    from st_retrofit.mining import mine_stage

    return mine_stage(recipe.mining, recipe.seed, run_dir / "synth" / "dataset", run_dir / "mine")


def _train(recipe: Recipe, run_dir: Path) -> Path:
    from st_retrofit.train import train_stage

    return train_stage(recipe, run_dir / "mine" / "dataset", run_dir / "train")


def _eval(recipe: Recipe, run_dir: Path) -> Path:
    from st_retrofit.evaluate import eval_stage

    return eval_stage(recipe, run_dir / "synth" / "dataset", run_dir / "train" / "model", run_dir / "eval")


def _publish(recipe: Recipe, run_dir: Path) -> Path:
    from st_retrofit.publish import publish_stage

    eval_dir = run_dir / "eval" if is_up_to_date(recipe, "eval") else None
    return publish_stage(recipe, run_dir / "train" / "model", eval_dir, run_dir / "publish")


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("synth", ("synth",), (), _synth),
        Stage("mine", ("mining",), ("synth",), _mine),
        Stage("train", ("model", "mixing", "train"), ("mine",), _train),
        Stage("eval", ("model", "eval"), ("synth", "train"), _eval),
        Stage(
            "publish", ("publish", "synth", "mining", "mixing", "model", "train"), ("train",), _publish, uses=("eval",)
        ),
    )
}


def stage_state(run_dir: Path, name: str) -> dict:
    path = run_dir / name / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def fingerprint(recipe: Recipe, name: str) -> str:
    """The stage's own sections plus, recursively, the fingerprints of the stages it reads."""
    stage = STAGES[name]
    parts = [recipe.section_hash(*stage.sections)] + [fingerprint(recipe, need) for need in stage.needs]
    parts += [fingerprint(recipe, use) if is_up_to_date(recipe, use) else "-" for use in stage.uses]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def is_up_to_date(recipe: Recipe, name: str) -> bool:
    """Whether ``name`` finished with the fingerprint the recipe gives it now."""
    state = stage_state(recipe.run_dir, name)
    return state.get("status") == "done" and state.get("fingerprint") == fingerprint(recipe, name)


def run_stage(recipe: Recipe, name: str, force: bool = False) -> Path:
    """Run one stage (its inputs must be up to date) and return its main output."""
    stage, run_dir = STAGES[name], recipe.run_dir
    for need in stage.needs:
        if not is_up_to_date(recipe, need):
            raise StageError(
                f"{name} reads the output of {need}, which is missing or out of date; "
                f"run `st-retrofit {need}` (or `st-retrofit run`) first"
            )
    folder, fp = run_dir / name, fingerprint(recipe, name)
    state = stage_state(run_dir, name)
    if not force and state.get("status") == "done" and state.get("fingerprint") == fp:
        logger.info("Stage %s is up to date (%s), skipping", name, fp)
        return Path(state["output"])
    if force or state.get("fingerprint") != fp:
        shutil.rmtree(folder, ignore_errors=True)
    elif state.get("status") == "running":
        logger.info("Resuming interrupted stage %s", name)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    (folder / "stage.json").write_text(json.dumps({"status": "running", "fingerprint": fp}))
    logger.info("Running stage %s", name)
    output = stage.run(recipe, run_dir)
    seconds = round(time.time() - started, 1)
    record = {"status": "done", "fingerprint": fp, "output": str(output), "seconds": seconds}
    (folder / "stage.json").write_text(json.dumps(record, indent=2))
    logger.info("Stage %s done in %.1f s", name, seconds)
    return output


def write_manifest(recipe: Recipe) -> Path:
    """``manifest.json`` in the run folder: package versions, the recipe and each stage's fingerprint."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for package in ("st-retrofit", "sentence-transformers", "transformers", "peft", "torch", "datasets"):
        try:
            packages[package] = version(package)
        except PackageNotFoundError:
            packages[package] = None
    manifest = {
        "recipe": recipe.to_dict(),
        "python": platform.python_version(),
        "packages": packages,
        "stages": {name: stage_state(recipe.run_dir, name) for name in STAGES},
    }
    path = recipe.run_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def run_pipeline(recipe: Recipe, stages: list[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Run ``stages`` (default: all) in pipeline order and return each stage's main output.

    Example::

        from st_retrofit import load_recipe, run_pipeline

        outputs = run_pipeline(load_recipe("recipes/quickstart.yaml"))
        outputs["publish"]  # the release folder
    """
    selected = list(STAGES) if stages is None else stages
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, recipe.run_dir / "recipe.yaml")
    outputs = {}
    for name in STAGES:
        if name in selected:
            outputs[name] = run_stage(recipe, name, force=force)
    write_manifest(recipe)
    return outputs
