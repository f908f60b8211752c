"""Every user mistake, through the command line in a subprocess: exit code 2, a single ``error:`` line that names
the key or the file, no traceback, and the run's finished output and recipe untouched.

Each row is (case, how the command is set up, text the error line must contain). The run folder is a finished
tiny run, shared by all rows; each row checks it is exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(tiny_model_path, tmp_path_factory):
    """A finished run of every stage on the tiny model, and the recipe file that made it."""
    folder = tmp_path_factory.mktemp("cli")
    data = {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(folder / "runs"),
        "model": {"base": str(tiny_model_path), "max_seq_length": 48, "lora": {"r": 4, "alpha": 8}},
        "synth": {"languages": ["en", "ru"], "train_entities": 8, "eval_entities": 4},
        "mining": {"teacher": str(tiny_model_path), "num_negatives": 2, "relative_margin": None, "batch_size": 16},
        "train": {"args": {"per_device_train_batch_size": 8, "max_steps": 2, "save_steps": 2, "disable_tqdm": True}},
        "eval": {"k": 5, "batch_size": 16},
    }
    recipe_file = folder / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    # The environment the autouse fixture sets is read here once, for the whole module.
    run_pipeline(recipe_from_dict(data))
    return folder, data


def _snapshot(run_dir: Path) -> dict[str, str]:
    finished = [p for p in run_dir.glob("*/stage.json") if not p.parent.name.endswith(".partial")]
    files = [*finished, run_dir / "recipe.yaml", run_dir / "train" / "model" / "model.safetensors"]
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def _folder(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def _unfinished_run(folder: Path) -> Path:
    """A run folder whose training never finished: its recipe and a partial train stage, no train/model."""
    run = _folder(folder / "unfinished-run")
    (run / "recipe.yaml").write_text("name: unfinished\n")
    _folder(run / "train.partial")
    return run


def _corpus_recipe(folder: Path, data: dict, corpus: Path) -> list[str]:
    recipe = {**data, "synth": {"source": "corpus", "corpus": {"path": str(corpus)}}, "mining": {**data["mining"],
              "group_by": None}}  # fmt: skip
    return ["validate", str(_write(folder, "corpus-recipe.yaml", yaml.safe_dump(recipe).encode()))]


def _recipe_elsewhere(folder: Path, data: dict) -> list[str]:
    """A recipe in a sub-folder whose corpus path names a file that exists only in the folder the command runs in."""
    _write(folder, "docs.jsonl", b'{"text": "one page"}\n{"text": "another page"}\n')
    recipe = {**data, "synth": {"source": "corpus", "corpus": {"path": "docs.jsonl"}}, "mining": {**data["mining"],
              "group_by": None}}  # fmt: skip
    return ["validate", str(_write(_folder(folder / "elsewhere"), "r.yaml", yaml.safe_dump(recipe).encode()))]


# (case, argv from (folder, data, recipe file), text the error line must contain)
CASES = [
    ("misspelled key", lambda f, d, r: ["validate", str(r), "--set", "mining.relative_margn=0.1"],
     "mining.relative_margn: unknown key (did you mean relative_margin?)"),
    ("--set without =", lambda f, d, r: ["validate", str(r), "--set", "mining.num_negatives"], "--set: expected key.path=value"),
    ("--set with bad YAML", lambda f, d, r: ["validate", str(r), "--set", "synth.languages=[en, de"], "is not valid YAML"),
    ("missing recipe", lambda f, d, r: ["validate", str(f / "absent.yaml")], "absent.yaml does not exist"),
    ("recipe path is a folder", lambda f, d, r: ["validate", str(_folder(f / "recipes"))],
     "recipes is a folder; name the recipe's YAML file in it"),
    ("--set index past the end", lambda f, d, r: ["validate", str(r), "--set", "train.losses[2].weight=1"],
     "train.losses[2].weight: train.losses has 0 entries; index 2 is past its end"),
    ("empty recipe", lambda f, d, r: ["validate", str(_write(f, "empty.yaml", b""))], "empty.yaml is empty"),
    ("duplicate keys", lambda f, d, r: ["validate", str(_write(f, "dup.yaml", b"name: a\nname: b\n"))],
     "key 'name' appears twice"),
    ("recipe not UTF-8", lambda f, d, r: ["validate", str(_write(f, "latin.yaml", "name: caf\xe9\n".encode("latin-1")))],
     "latin.yaml is not UTF-8 text"),
    ("recipe not YAML", lambda f, d, r: ["validate", str(_write(f, "broken.yaml", b"model: [unclosed\n"))],
     "is not valid YAML"),
    ("batch size 0", lambda f, d, r: ["validate", str(r), "--set", "train.args.per_device_train_batch_size=0"],
     "train.args.per_device_train_batch_size: expected >= 1, got 0"),
    ("batch size a word", lambda f, d, r: ["validate", str(r), "--set", "train.args.per_device_train_batch_size=eight"],
     "train.args.per_device_train_batch_size: expected an integer, got 'eight'"),
    ("max_steps a word", lambda f, d, r: ["validate", str(r), "--set", "train.args.max_steps=abc"],
     "train.args.max_steps: expected an integer"),
    ("negative learning rate", lambda f, d, r: ["validate", str(r), "--set", "train.args.learning_rate=-0.1"],
     "train.args.learning_rate: expected >= 0"),
    ("unknown loss", lambda f, d, r: ["validate", str(r), "--set", "train.loss=NoSuchLoss"],
     "; known losses: CachedRetrofitInfoNCELoss, OrthogonalEmbedDistillLoss, RetrofitInfoNCELoss, TeacherEmbeddingLoss, "),
    ("missing local corpus", lambda f, d, r: _corpus_recipe(f, d, f / "my_docs.jsonl"), "my_docs.jsonl does not exist"),
    ("empty corpus", lambda f, d, r: _corpus_recipe(f, d, _write(f, "empty.jsonl", b"")), "empty.jsonl is empty"),
    ("one-document corpus", lambda f, d, r: _corpus_recipe(f, d, _write(f, "one.jsonl", b'{"text": "a page"}\n\n')),
     "one.jsonl holds one document; pairs, a held-out split and hard negatives need at least two"),
    ("corpus not UTF-8", lambda f, d, r: _corpus_recipe(f, d, _write(f, "latin.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"))),
     "latin.jsonl, line 1: not UTF-8 text"),
    ("broken jsonl line", lambda f, d, r: _corpus_recipe(f, d, _write(f, "broken.jsonl", b'{"text": "a"}\n{"text": "b"\n')),
     "broken.jsonl, line 2: not valid JSON"),
    ("group_by column missing", lambda f, d, r: ["validate", str(r), "--set", "mining.group_by=domain"],
     "mining.group_by: the training pairs have no column 'domain'"),
    ("output folder under a file", lambda f, d, r: ["validate", str(r), "--set", f"output_dir={_write(f, 'afile', b'x')}/runs"],
     "output_dir: "),
    ("stage before its input", lambda f, d, r: ["train", str(r), "--set", "synth.train_entities=9"],
     "train reads the output of mine, which is missing or out of date"),
    ("bf16 on a CPU at train time", lambda f, d, r: ["train", str(r), "--set", "train.args.bf16=true", "--force"],
     "train.args.bf16"),
    ("evaluate an unfinished run", lambda f, d, r: ["evaluate", str(_unfinished_run(f)), "--tasks", str(f)],
     "is a run folder whose training has not finished (no train/model)"),
    ("merge an unfinished run", lambda f, d, r: ["merge", str(_unfinished_run(f)), d["model"]["base"], "-o", str(f / "soup")],
     "is a run folder whose training has not finished (no train/model)"),
    ("LoRA target typo", lambda f, d, r: ["validate", str(r), "--set", "model.lora.target_modules=[qeury, value]"],
     "has no linear layer named 'qeury' (did you mean query?)"),
    ("teacher folder that is no model", lambda f, d, r: ["validate", str(r), "--set", f"mining.teacher={_folder(f / 'empty-model')}"],
     "mining.teacher: model folder"),
    ("input only in the working folder", lambda f, d, r: _recipe_elsewhere(f, d),
     "synth.corpus.path: docs.jsonl is not beside the recipe"),
    ("--stages typo", lambda f, d, r: ["run", str(r), "--stages", "synth,mien"],
     "--stages: unknown stage 'mien' (did you mean mine?)"),
    ("export into an existing folder", lambda f, d, r: ["export", d["model"]["base"], str(_folder(f / "taken"))],
     "taken already exists; choose a new folder"),
    ("batch size past any run", lambda f, d, r: ["validate", str(r), "--set", f"train.args.per_device_train_batch_size={10**15}"],
     "error: train.args.per_device_train_batch_size: expected at most 2147483647"),
    ("pool size past any run", lambda f, d, r: ["validate", str(r), "--set", f"mining.pool_size={10**20}"],
     "error: mining.pool_size: expected at most 2147483647"),
    ("batch larger than the training set", lambda f, d, r: ["train", str(r), "--set", "train.args.per_device_train_batch_size=100000", "--force"],
     "train.args.per_device_train_batch_size: 100000 is more than the"),
    ("loss scale 0", lambda f, d, r: ["validate", str(r), "--set", "train.loss_kwargs.scale=0"],
     "error: train.loss_kwargs.scale: expected > 0, got 0"),
    ("loss argument of the wrong type", lambda f, d, r: ["validate", str(r), "--set", "train.loss_kwargs.hardness_mode=hardest"],
     "error: train.loss_kwargs.hardness_mode: expected 'in_batch_negatives' or 'hard_negatives' or 'all_negatives' or null"),
    ("publish a folder without a recipe", lambda f, d, r: ["publish", str(_folder(f / "not-a-run"))],
     "is not a run folder (no recipe.yaml)"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "text"), CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_error_line_and_nothing_finished_changes(finished_run, case, argv, text):
    folder, data = finished_run
    run_dir = Path(data["output_dir"]) / data["name"]
    before = _snapshot(run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "st_retrofit", *argv(folder, data, folder / "recipe.yaml")],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and text in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("where", ["after the command", "before the command"])
def test_verbose_shows_the_traceback_before_or_after_the_command(finished_run, where):
    folder, _ = finished_run
    argv = ["validate", str(folder / "absent.yaml")]
    argv = [*argv, "-v"] if where == "after the command" else ["-v", *argv]
    result = subprocess.run([sys.executable, "-m", "st_retrofit", *argv], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_publish_help_calls_its_argument_a_run_folder():
    result = subprocess.run([sys.executable, "-m", "st_retrofit", "publish", "--help"], capture_output=True, text=True)
    assert "a run folder (runs/NAME; its recipe.yaml is used) or a recipe" in " ".join(result.stdout.split())


def test_ctrl_c_is_one_line_that_says_how_to_resume(finished_run):
    import signal
    import time

    folder, data = finished_run
    recipe = {**data, "name": "interrupted", "train": {"args": {"per_device_train_batch_size": 2, "max_steps": 500,
              "save_steps": 1, "disable_tqdm": True}}}  # fmt: skip
    path = _write(folder, "slow.yaml", yaml.safe_dump(recipe).encode())
    process = subprocess.Popen(
        [sys.executable, "-m", "st_retrofit", "run", str(path)], stderr=subprocess.PIPE, text=True, cwd=folder
    )
    checkpoints = Path(data["output_dir"]) / "interrupted" / "train.partial" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*")):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert process.returncode == 130, stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted; rerun the same command to resume from train")
    assert "Traceback" not in stderr
    state = json.loads((checkpoints.parent / "stage.json").read_text())
    assert state["status"] == "interrupted"


def test_a_hub_teacher_that_cannot_be_had_stops_in_seconds_naming_the_key(finished_run):
    """Without HF_HUB_OFFLINE: no network fails at once when the stage loads it (the Hub cannot be reached), and a
    Hub that answers refuses the id at validation; either way one line naming mining.teacher."""
    import os
    import time

    folder, _ = finished_run
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "st_retrofit", "mine", str(folder / "recipe.yaml"), "--set",
         "mining.teacher=st-retrofit-tests/no-such-model"],
        capture_output=True, text=True, env=env, cwd=folder, timeout=300,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith("error: mining.teacher: ") and "st-retrofit-tests/no-such-model" in errors[0]
    assert "Traceback" not in result.stderr and time.time() - started < 60


def test_a_hub_corpus_offline_is_one_line_without_the_clients_retries(finished_run):
    """Without HF_HUB_OFFLINE and without a network, a Hub dataset as the corpus: validation warns once that it
    cannot check it, and reading it stops with one line naming synth.corpus.path and the fix (the Hub client alone
    retries for half a minute, a line per retry). With a network, the Hub refuses the id at validation."""
    import os

    folder, data = finished_run
    recipe = {**data, "synth": {"source": "corpus", "corpus": {"path": "st-retrofit-tests/no-such-dataset"}},
              "mining": {**data["mining"], "group_by": None}}  # fmt: skip
    path = _write(folder, "hub-corpus.yaml", yaml.safe_dump(recipe).encode())
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-m", "st_retrofit", "run", str(path), "--stages", "synth"],
        capture_output=True, text=True, env=env, cwd=folder, timeout=300,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith("error: synth.corpus.path: ") and "st-retrofit-tests/no-such-dataset" in errors[0]
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_is_one_line_naming_the_path_and_its_free_space(finished_run):
    """A file-size limit (``ulimit -f``) makes the final save fail as a full disk does: one line naming the file and
    the free space, exit 2, and the finished model as it was."""
    import resource

    folder, data = finished_run
    run_dir = Path(data["output_dir"]) / data["name"]
    before = _snapshot(run_dir)
    limit = (run_dir / "train" / "model" / "model.safetensors").stat().st_size // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "st_retrofit", "train", str(folder / "recipe.yaml"), "--force"],
        capture_output=True, text=True, cwd=folder, timeout=300, preexec_fn=small_files,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith("error: File too large writing ") and "MiB free there" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert _snapshot(run_dir) == before
