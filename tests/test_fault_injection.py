"""Fault injection: a real ``st-retrofit run`` killed (SIGKILL) or interrupted (SIGINT) at a random moment of a
stage, then run again, ends with the outputs of a run that was never interrupted, bit for bit: the pairs, the mined
rows, the trained weights (full fine-tuning and LoRA), the reports, the scores and the release.

One case per fine-tuning mode runs by default (the train stage, where a resume is hardest to get right); the slow
variant draws 10 seeds per mode over every stage and both signals.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

STAGES = ("synth", "mine", "train", "eval", "publish")
SIGNALS = (signal.SIGKILL, signal.SIGINT)


def _recipe(tiny_model_path: Path, folder: Path, lora: bool) -> Path:
    """The tiny recipe, trained for 6 steps with a checkpoint every 2 (so a kill in training has one to resume)."""
    data = {
        "name": "faults",
        "seed": 7,
        "output_dir": str(folder / "runs"),
        "model": {"base": str(tiny_model_path), "max_seq_length": 48,
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]} if lora else None},
        "synth": {"languages": ["en", "ru", "ja"], "train_entities": 12, "eval_entities": 6},
        "mining": {"teacher": str(tiny_model_path), "num_negatives": 2, "relative_margin": None, "batch_size": 16},
        "train": {"loss": "RetrofitInfoNCELoss",
                  "args": {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1,
                           "max_steps": 6, "save_steps": 2, "lr_scheduler_type": "constant", "disable_tqdm": True}},
        "eval": {"k": 5, "batch_size": 16},
        "publish": {"repo_id": "test-org/tiny-retrofit", "dry_run": True},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ST_RETROFIT_CACHE": str(cache),
            "HF_HOME": str(cache / "hf_home"), "PYTHONHASHSEED": "0"}  # fmt: skip


def _command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "st_retrofit", "run", str(recipe)]


def _run(recipe: Path, env: dict[str, str]) -> None:
    result = subprocess.run(_command(recipe), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(folder: Path) -> dict[str, str]:
    from datasets import Dataset, load_from_disk

    data = load_from_disk(str(folder))
    splits = {"": data} if isinstance(data, Dataset) else dict(data)
    return {name: hashlib.sha256(json.dumps(split.to_list(), sort_keys=True).encode()).hexdigest()
            for name, split in splits.items()}  # fmt: skip


def _outputs(run_dir: Path) -> dict:
    """Every stage's finished output, less what records when or how often it ran (times, paths of attempts)."""
    train = run_dir / "train"
    metrics = json.loads((train / "train_metrics.json").read_text())
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    return {
        "synth": _rows(run_dir / "synth" / "dataset"),
        "mine": _rows(run_dir / "mine" / "dataset"),
        "weights": {
            str(p.relative_to(train)): _digest(p)
            for p in sorted(train.rglob("*.safetensors"))
            if "checkpoints" not in p.parts
        },
        "train_loss": metrics["train_loss"],
        "negative_sampling": json.loads((train / "mixture.json").read_text()).get("negative_sampling")
        if (train / "mixture.json").is_file()
        else None,
        "scores": {
            model: {k: v for k, v in scores.items() if "time" not in k and "seconds" not in k}
            for model, scores in results.items()
            if isinstance(scores, dict)
        },
        "release": {p.name: _digest(p) for p in sorted((run_dir / "publish" / "release").glob("*.safetensors"))},
    }


def _interrupt(recipe: Path, run_dir: Path, env: dict[str, str], stage: str, delay: float, sig: int) -> str:
    """Start a run, wait until ``stage`` is running, wait ``delay`` seconds more, send ``sig``; returns where it
    landed (the stage that was running, or ``finished`` when the run ended first)."""
    process = subprocess.Popen(_command(recipe), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not _running(run_dir, stage):
        time.sleep(0.02)
    time.sleep(delay)
    landed = next((s for s in STAGES if _running(run_dir, s)), "finished")
    if process.poll() is None:
        process.send_signal(sig)
    _, stderr = process.communicate(timeout=300)
    if sig == signal.SIGINT and process.returncode not in (0, 130):
        pytest.fail(f"SIGINT gave exit {process.returncode}: {stderr.decode()[-2000:]}")
    return landed


def _running(run_dir: Path, stage: str) -> bool:
    try:
        return json.loads((run_dir / f"{stage}.partial" / "stage.json").read_text()).get("status") == "running"
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_path, tmp_path_factory):
    """The outputs and the stage times of one uninterrupted run per fine-tuning mode, made when first asked for."""
    made: dict[bool, tuple[dict, dict]] = {}

    def get(lora: bool) -> tuple[dict, dict]:
        if lora not in made:
            folder = tmp_path_factory.mktemp("uninterrupted")
            recipe = _recipe(tiny_model_path, folder, lora)
            _run(recipe, _environment(folder / "cache"))
            run_dir = folder / "runs" / "faults"
            seconds = {s: json.loads((run_dir / s / "stage.json").read_text())["seconds"] for s in STAGES}
            made[lora] = (_outputs(run_dir), seconds)
        return made[lora]

    return get


def _check(uninterrupted, tiny_model_path, tmp_path, lora: bool, stage: str, sig: int, seed: int) -> None:
    expected, seconds = uninterrupted(lora)
    recipe = _recipe(tiny_model_path, tmp_path, lora)
    run_dir = tmp_path / "runs" / "faults"
    env = _environment(tmp_path / "cache")  # a cold cache, as the uninterrupted run had
    # The stage's own time spans loading what it needs; a delay past it lands in a later stage.
    delay = random.Random(seed).uniform(0, seconds[stage])
    landed = _interrupt(recipe, run_dir, env, stage, delay, sig)
    _run(recipe, env)
    got = _outputs(run_dir)
    assert math.isclose(got.pop("train_loss"), expected["train_loss"], rel_tol=1e-6), (landed, delay)
    assert got == {k: v for k, v in expected.items() if k != "train_loss"}, (landed, delay)


@pytest.mark.parametrize(("lora", "sig"), [(False, signal.SIGKILL), (True, signal.SIGINT)], ids=["full", "lora"])
def test_a_run_killed_in_training_and_run_again_ends_as_an_uninterrupted_run(
    uninterrupted, tiny_model_path, tmp_path, lora, sig
):
    _check(uninterrupted, tiny_model_path, tmp_path, lora, "train", sig, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_run_killed_anywhere_and_run_again_ends_as_an_uninterrupted_run(
    uninterrupted, tiny_model_path, tmp_path, lora, seed
):
    # Seeds 0-4 cover every stage with SIGKILL, 5-9 with SIGINT.
    _check(uninterrupted, tiny_model_path, tmp_path, lora, STAGES[seed % 5], SIGNALS[seed // 5], seed)
