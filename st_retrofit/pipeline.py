"""Run the stages of a recipe in order: synth -> mine -> train -> eval -> publish.

Every stage writes into its own folder of the run folder and records a ``stage.json`` with a fingerprint: the hash
of the recipe sections it reads, a content hash of the local files it reads (corpus, data sources, models given as
folders), and the fingerprints of the stages it depends on. A stage whose finished fingerprint matches is skipped.

A stage runs in ``<stage>.partial/`` and is swapped in for ``<stage>/`` only when it completes, so a failure never
destroys the output of an earlier run (:mod:`st_retrofit.runfolder`). A stage that failed or was interrupted with
the same fingerprint resumes in its partial folder (the trainer continues from its last checkpoint, the miner from
its shards); a stage whose inputs changed starts that folder afresh. One run at a time holds the run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from st_retrofit.config import SectionView, StRetrofitError, keyed
from st_retrofit.recipe import SECTIONS, Recipe, save_recipe
from st_retrofit.runfolder import (
    MINED,
    MINING_SOURCES,
    PAIRS,
    TRAINED_MODEL,
    UNLABELED,
    commit,
    describe_error,
    locked,
    partial_folder,
    read_state,
    recover_swap,
    write_state,
)

logger = logging.getLogger(__name__)


class StageError(StRetrofitError, RuntimeError):
    """A stage cannot run (for example, the stage it reads from has not run)."""


@dataclass(frozen=True)
class Stage:
    """One pipeline step: the recipe sections it reads, the stages it reads from, and how to run it.

    ``run(view, run_dir, output_dir)`` receives a :class:`~st_retrofit.config.SectionView` holding only
    ``sections`` (and the seed and run folder), so the fingerprint, made of exactly those sections, covers
    everything the stage can read; it reads earlier stages' output under ``run_dir`` and writes into ``output_dir``.
    ``uses`` are stages read when they have run (publish takes evaluation results when there are any); their
    fingerprints count as inputs then, so new results make the stage run again.
    """

    name: str
    sections: tuple[str, ...]
    needs: tuple[str, ...]
    run: Callable[[SectionView, Path, Path], Path]
    uses: tuple[str, ...] = ()

    def view(self, recipe: Recipe) -> SectionView:
        return SectionView(recipe, self.name, self.sections)

    def local_inputs(self, recipe: Recipe) -> list[str]:
        """The local files and folders its sections name (corpus, data sources, template folders, models given
        as folders); their contents count in the fingerprint."""
        from st_retrofit.dataio import is_local

        paths = [path for section in self.sections for path in getattr(recipe, section).local_inputs()]
        return [path for path in dict.fromkeys(paths) if path and not path.startswith("offline:") and is_local(path)]


def _synth(recipe: SectionView, run_dir: Path, output_dir: Path) -> Path:
    from st_retrofit.synth.backends.base import SynthBackendError

    try:
        with keyed("synth"):
            return recipe.synth.source_entry.run(recipe.synth, recipe.seed, output_dir)
    except SynthBackendError as exc:
        raise StageError(f"synth: {exc}") from None


def _mine(recipe: SectionView, run_dir: Path, output_dir: Path) -> Path:
    from st_retrofit.data.sources import training_pairs
    from st_retrofit.mining.stage import mine_stage

    with keyed("data"):
        pairs, sources = training_pairs(recipe.data, PAIRS.at(run_dir), recipe.seed)
    MINING_SOURCES.inside(output_dir).write_text(json.dumps(sources, indent=2), encoding="utf-8")
    unlabeled = None
    wanted = recipe.mining.unlabeled_per_language != 0 or recipe.mining.corpus_candidates
    if wanted and UNLABELED.at(run_dir).is_dir():
        from datasets import load_from_disk

        unlabeled = load_from_disk(str(UNLABELED.at(run_dir)))
    with keyed("mining"):
        return mine_stage(recipe.mining, recipe.seed, pairs, output_dir, unlabeled)


def _train(recipe: SectionView, run_dir: Path, output_dir: Path) -> Path:
    from st_retrofit.train.stage import train_stage

    return train_stage(recipe, MINED.at(run_dir), output_dir)


def _eval(recipe: SectionView, run_dir: Path, output_dir: Path) -> Path:
    from st_retrofit.evaluation.stage import eval_stage

    return eval_stage(recipe, PAIRS.at(run_dir), TRAINED_MODEL.at(run_dir), output_dir)


def _publish(recipe: SectionView, run_dir: Path, output_dir: Path) -> Path:
    from st_retrofit.publish.release import publish_stage

    eval_dir = run_dir / "eval" if is_up_to_date(recipe._recipe, "eval") else None
    write_manifest(recipe._recipe)  # the release carries the manifest of the run it comes from
    return publish_stage(recipe, TRAINED_MODEL.at(run_dir), eval_dir, output_dir)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("synth", ("synth",), (), _synth),
        Stage("mine", ("data", "mining"), ("synth",), _mine),
        # mining: the pool's negatives per row when mixing.num_negatives is null.
        Stage("train", ("model", "mining", "mixing", "train", "merge"), ("mine",), _train),
        Stage("eval", ("model", "train", "eval"), ("synth", "train"), _eval),  # train: its Matryoshka sizes
        # publish: the release carries the whole recipe and the card describes every part of the run.
        Stage("publish", ("model", "synth", "data", "mining", "mixing", "train", "merge", "eval", "publish"), ("train",),
              _publish, uses=("eval",)),
    )
}  # fmt: skip


def inputs_hash(recipe: Recipe, name: str) -> str:
    """A content hash of the stage's local inputs (each file read once while its size and mtime stay the same)."""
    from st_retrofit.dataio import cached_content_hash

    parts = [cached_content_hash(path) for path in STAGES[name].local_inputs(recipe)]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16] if parts else "-"


def stage_state(run_dir: Path, name: str) -> dict:
    """The record of the stage's finished output (``{}`` when it never finished)."""
    return read_state(run_dir / name)


def stage_output(run_dir: Path, name: str) -> Path:
    """The main output of the finished stage (recorded relative to its folder)."""
    output = Path(stage_state(run_dir, name)["output"])
    return output if output.is_absolute() else run_dir / name / output


def fingerprint(recipe: Recipe, name: str) -> str:
    """The stage's own sections, the contents of its local input files, and, recursively, the fingerprints of the
    stages it reads."""
    stage = STAGES[name]
    parts = [recipe.section_hash(*stage.sections), inputs_hash(recipe, name)]
    parts += [fingerprint(recipe, need) for need in stage.needs]
    parts += [fingerprint(recipe, use) if is_up_to_date(recipe, use) else "-" for use in stage.uses]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def is_up_to_date(recipe: Recipe, name: str) -> bool:
    """Whether ``name`` finished with the fingerprint the recipe gives it now."""
    state = stage_state(recipe.run_dir, name)
    return state.get("status") == "done" and state.get("fingerprint") == fingerprint(recipe, name)


# Stages that every process of a distributed launch runs; the others run on the main process while the rest wait.
DISTRIBUTED_STAGES = ("train",)


def run_stage(recipe: Recipe, name: str, force: bool = False) -> Path:
    """Run one stage (its inputs must be up to date) and return its main output.

    The stage runs in ``<stage>.partial/`` and replaces ``<stage>/`` only when it completes; a failure leaves the
    earlier output as it was and records ``failed`` (or ``interrupted``) with the error in the partial folder,
    where the next run with the same settings resumes. The run's ``recipe.yaml`` is replaced after the stage
    commits, so it always describes finished output.

    Under ``torchrun`` / ``accelerate launch`` the ``train`` stage runs in every process (the trainer shards the
    batches, DDP or DeepSpeed syncs the gradients) and the other stages run in the main process while the rest
    wait; only the main process writes ``stage.json`` and the exported model.
    """
    from st_retrofit.distributed import barrier, is_distributed, is_main_process

    stage, run_dir = STAGES[name], recipe.run_dir
    main, everywhere = is_main_process(), name in DISTRIBUTED_STAGES
    with locked(run_dir) if main else contextlib.nullcontext():
        if main:
            recover_swap(run_dir, name)
        for need in stage.needs:
            if not is_up_to_date(recipe, need):
                raise StageError(
                    f"{name} reads the output of {need}, which is missing or out of date; "
                    f"run `st-retrofit {need}` (or `st-retrofit run`) first"
                )
        fp = fingerprint(recipe, name)
        state = stage_state(run_dir, name)
        if not force and state.get("status") == "done" and state.get("fingerprint") == fp:
            logger.info("Stage %s is up to date (%s), skipping", name, fp)
            return stage_output(run_dir, name)
        if is_distributed() and not everywhere:
            logger.warning("Stage %s runs in the main process only; the other processes wait for it", name)
        partial = partial_folder(run_dir, name)
        started = time.time()
        if main:
            _prepare_partial(partial, name, fp, force)
        barrier()
        try:
            output = stage.run(stage.view(recipe), run_dir, partial) if main or everywhere else None
        except BaseException as exc:
            if main:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                write_state(partial, {"status": status, "fingerprint": fp, "error": describe_error(exc)})
            raise
        if main:
            seconds = round(time.time() - started, 1)
            output = Path(output)
            relative = str(output.relative_to(partial)) if output.is_relative_to(partial) else str(output)
            write_state(partial, {"status": "done", "fingerprint": fp, "output": relative, "seconds": seconds})
            commit(run_dir, name)
            save_recipe(recipe, run_dir / "recipe.yaml")
            logger.info("Stage %s done in %.1f s", name, seconds)
        barrier()  # the other processes read the record the main one wrote
        return stage_output(run_dir, name)


def interrupted_stage(run_dir: Path) -> str | None:
    """``train (step 40)``: the stage whose partial folder an interrupt or failure left, with the trainer's last
    checkpoint when there is one; ``None`` when nothing is pending."""
    for name in STAGES:
        partial = partial_folder(run_dir, name)
        if read_state(partial).get("status") in ("running", "interrupted", "failed"):
            steps = [
                int(p.name.split("-")[-1]) for p in partial.glob("checkpoints/checkpoint-*") if p.name[11:].isdigit()
            ]
            return f"{name} (step {max(steps)})" if steps else name
    return None


def _prepare_partial(partial: Path, name: str, fp: str, force: bool) -> None:
    """Keep the partial folder of an earlier attempt with the same fingerprint (to resume), else start it afresh."""
    earlier = read_state(partial)
    if force or earlier.get("fingerprint") != fp:
        shutil.rmtree(partial, ignore_errors=True)
    elif earlier.get("status") == "failed":
        logger.warning("Stage %s failed last time (%s); running it again in %s", name, earlier.get("error"), partial)
    elif earlier.get("status") in ("running", "interrupted"):
        logger.info("Resuming interrupted stage %s from %s", name, partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_state(partial, {"status": "running", "fingerprint": fp})
    logger.info("Running stage %s", name)


MANIFEST_PACKAGES = (
    "st-retrofit", "sentence-transformers", "transformers", "torch", "peft", "accelerate", "datasets",
    "huggingface-hub", "mteb", "tokenizers", "faiss-cpu", "openai", "deepspeed",
)  # fmt: skip


def git_state(folder: Path | None = None) -> dict | None:
    """``{"commit": ..., "dirty": bool}`` of the git checkout holding ``folder`` (default: the working directory),
    or ``None`` outside one."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    """Processor, memory and accelerators of this machine, and the distributed world size."""
    import os
    import platform

    import torch

    info: dict = {
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpu_count": os.cpu_count(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    return info


def dataset_fingerprints(run_dir: Path) -> dict:
    """``{stage/folder: {split: fingerprint}}`` of every dataset the stages saved, read from their state files."""
    found: dict[str, dict[str, str]] = {}
    for state in sorted(run_dir.glob("*/*/**/state.json")):
        try:
            fingerprint = json.loads(state.read_text())["_fingerprint"]
        except (ValueError, KeyError):
            continue
        folder = state.parent
        dataset = folder.parent if (folder.parent / "dataset_dict.json").exists() else folder
        split = folder.name if dataset is not folder else "-"
        found.setdefault(str(dataset.relative_to(run_dir)), {})[split] = fingerprint
    return found


def write_manifest(recipe: Recipe) -> Path:
    """``manifest.json`` in the run folder: what is needed to say how a result was made and to make it again.

    The recipe and its hash, the seeds, package versions, the git commit of the working directory and of
    st-retrofit's own source when it runs from a checkout (each with whether it had uncommitted changes), the hardware, each stage's state and fingerprint, the fingerprints of every saved
    dataset, and the training-data sources (``mine/sources.json``).
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for package in MANIFEST_PACKAGES:
        try:
            packages[package] = version(package)
        except PackageNotFoundError:
            packages[package] = None
    sources = MINING_SOURCES.at(recipe.run_dir)
    manifest = {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.section_hash(*SECTIONS),
        "seeds": {
            "seed": recipe.seed,
            "train.args.seed": recipe.train.args.get("seed", recipe.seed),
            "train.args.data_seed": recipe.train.args.get("data_seed"),
        },
        "python": platform.python_version(),
        "packages": {name: v for name, v in packages.items() if v is not None},
        "git": git_state(),  # the working directory: usually the project holding the recipe
        "st_retrofit_git": git_state(Path(__file__).parent),  # the code that ran, when installed from a checkout
        "hardware": hardware(),
        "stages": {name: stage_state(recipe.run_dir, name) for name in STAGES},
        "datasets": dataset_fingerprints(recipe.run_dir),
        "sources": json.loads(sources.read_text()) if sources.is_file() else {},
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
    from st_retrofit.distributed import barrier, is_main_process

    outputs = {}
    with locked(recipe.run_dir) if is_main_process() else contextlib.nullcontext():
        for name in STAGES:
            if name in selected:
                outputs[name] = run_stage(recipe, name, force=force)
        if is_main_process():
            write_manifest(recipe)
    barrier()
    return outputs
