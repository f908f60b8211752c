"""Nothing finished is destroyed: a stage that fails at its start, in its middle or at its end leaves the earlier
output intact and loadable; a run folder is used by one process at a time; every user mistake is one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from sentence_transformers import SentenceTransformer

from st_retrofit import pipeline
from st_retrofit.pipeline import STAGES, Stage, run_pipeline, run_stage, stage_state
from st_retrofit.recipe import recipe_from_dict
from st_retrofit.runfolder import locked, partial_folder, read_state

REPO = Path(__file__).resolve().parents[1]


def _loads(run_dir: Path, name: str) -> None:
    """The finished output of ``name`` opens the way the next stage opens it."""
    folder = run_dir / name
    if name == "synth":
        assert set(load_from_disk(str(folder / "dataset"))) == {"train", "eval"}
    elif name == "mine":
        assert len(load_from_disk(str(folder / "dataset")))
    elif name == "train":
        assert SentenceTransformer(str(folder / "model"), device="cpu").encode(["x"]).shape == (1, 32)
    elif name == "eval":
        assert "retrofitted" in json.loads((folder / "results.json").read_text())
    else:
        assert SentenceTransformer(str(folder / "release"), device="cpu").encode(["x"]).shape == (1, 32)


class Injected(RuntimeError):
    pass


def _failing(real, moment: str):
    def run(view, run_dir, output_dir):
        if moment == "start":
            raise Injected("failed at start")
        if moment == "middle":
            (output_dir / "half-written.bin").write_bytes(b"\0" * 1024)
            raise Injected("failed at middle")
        real(view, run_dir, output_dir)  # the whole stage, then a failure before it is committed
        raise Injected("failed at end")

    return run


def test_a_failing_stage_leaves_the_finished_output_intact_and_the_next_run_reports_it(
    tiny_recipe_data, monkeypatch, caplog
):
    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe)
    run_dir = recipe.run_dir
    saved_recipe = (run_dir / "recipe.yaml").read_text()
    for name, stage in list(STAGES.items()):
        committed = stage_state(run_dir, name)
        for moment in ("start", "middle", "end"):
            broken = {
                **STAGES,
                name: Stage(name, stage.sections, stage.needs, _failing(stage.run, moment), stage.uses),
            }
            monkeypatch.setattr(pipeline, "STAGES", broken)
            with pytest.raises(Injected):
                run_stage(recipe, name, force=True)
            assert stage_state(run_dir, name) == committed, (name, moment)
            _loads(run_dir, name)
            failed = read_state(partial_folder(run_dir, name))
            assert failed["status"] == "failed" and f"failed at {moment}" in failed["error"], (name, moment)
            assert (run_dir / "recipe.yaml").read_text() == saved_recipe
        monkeypatch.setattr(pipeline, "STAGES", {**STAGES})
    # The next run says what happened, resumes in the partial folder, and commits.
    monkeypatch.setattr(pipeline, "STAGES", STAGES)
    changed = recipe_from_dict(tiny_recipe_data, ["eval.k=3"])
    broken = {**STAGES, "eval": Stage("eval", STAGES["eval"].sections, ("synth", "train"), _failing(None, "start"))}
    monkeypatch.setattr(pipeline, "STAGES", broken)
    with pytest.raises(Injected):
        run_stage(changed, "eval")
    monkeypatch.setattr(pipeline, "STAGES", STAGES)
    with caplog.at_level("WARNING", logger="st_retrofit.pipeline"):
        run_stage(changed, "eval")
    assert "Stage eval failed last time (Injected: failed at start)" in caplog.text
    assert json.loads((run_dir / "eval" / "results.json").read_text())["k"] == 3
    assert not partial_folder(run_dir, "eval").exists()


def test_a_swap_cut_short_by_a_crash_is_finished_or_undone(tiny_recipe_data, counting_stages):
    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe, stages=["synth"])
    run_dir = recipe.run_dir
    # Crash between the two renames of a swap, with the new output done: the next run finishes the swap.
    (run_dir / "synth").rename(run_dir / "synth.replaced")
    partial_folder(run_dir, "synth").mkdir()
    (partial_folder(run_dir, "synth") / "stage.json").write_text(
        json.dumps({**read_state(run_dir / "synth.replaced"), "status": "done"})
    )
    from st_retrofit.runfolder import recover_swap

    recover_swap(run_dir, "synth")
    assert (run_dir / "synth" / "stage.json").is_file() and not (run_dir / "synth.replaced").exists()
    # The same crash with the new output unfinished: the old output comes back.
    (run_dir / "synth").rename(run_dir / "synth.replaced")
    (run_dir / "synth.replaced" / "marker").write_text("old")
    partial_folder(run_dir, "synth").mkdir()
    (partial_folder(run_dir, "synth") / "stage.json").write_text(json.dumps({"status": "running"}))
    recover_swap(run_dir, "synth")
    assert (run_dir / "synth" / "marker").read_text() == "old"


# ----------------------------------------------------------------------------------------------------------------
# The run folder lock, with two real processes


def test_a_second_run_of_a_busy_folder_stops_at_once_naming_the_holder(tiny_recipe_data, tmp_path):
    run_dir = Path(tiny_recipe_data["output_dir"]) / tiny_recipe_data["name"]
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from st_retrofit.runfolder import locked\nimport time\n"
         f"with locked({str(run_dir)!r}):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe_data))
        started = time.time()
        second = subprocess.run(
            [sys.executable, "-m", "st_retrofit", "synth", str(path)], capture_output=True, text=True, cwd=REPO
        )
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"in use by pid {holder.pid} on {socket.gethostname()}" in errors[0]
        assert "Traceback" not in second.stderr and time.time() - started < 30
        assert not (run_dir / "synth").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases the lock of a dead process
        holder.wait()
    with locked(run_dir):
        with locked(run_dir):  # re-entrant within one process
            pass


def test_another_process_is_told_who_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    script = f"from st_retrofit.runfolder import locked\nwith locked({str(folder)!r}): pass"
    with locked(folder):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert (
        f"RunFolderBusy: {folder.resolve()} is in use by pid {os.getpid()} on {socket.gethostname()}" in result.stderr
    )
    subprocess.run([sys.executable, "-c", script], check=True)  # released


def test_a_rerun_after_a_failed_final_save_exports_the_last_step_without_training_further(
    tiny_recipe_data, monkeypatch
):
    """The run reached max_steps, saved its last checkpoint, then failed saving the model (disk full): the rerun
    exports that checkpoint; it must not resume it and train a step past max_steps."""
    import torch

    data = {**tiny_recipe_data, "model": {**tiny_recipe_data["model"], "lora": None}}
    data["train"] = {**data["train"], "args": {**data["train"]["args"], "max_steps": 2, "save_steps": 2,
                                               "lr_scheduler_type": "constant"}}  # fmt: skip
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth", "mine"])
    real_save = SentenceTransformer.save_pretrained

    def disk_full(self, path, *args, **kwargs):
        if Path(path).name == "model":  # the final export, not a checkpoint
            raise OSError(28, "No space left on device", str(path))
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "save_pretrained", disk_full)
    with pytest.raises(OSError):
        run_stage(recipe, "train")
    monkeypatch.setattr(SentenceTransformer, "save_pretrained", real_save)
    [checkpoint] = [p for p in recipe.run_dir.rglob("checkpoint-2") if p.is_dir()]
    expected = SentenceTransformer(str(checkpoint), device="cpu").state_dict()

    run_stage(recipe, "train")
    trained = SentenceTransformer(str(recipe.run_dir / "train" / "model"), device="cpu").state_dict()
    assert all(torch.equal(trained[name], expected[name]) for name in expected)  # a third step would move them
    metrics = json.loads((recipe.run_dir / "train" / "train_metrics.json").read_text())
    assert metrics["train_loss"] > 0 and not list(recipe.run_dir.rglob("checkpoint-3"))
