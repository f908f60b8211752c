"""A synth stage killed with SIGKILL in the middle of generation, then run again from the CLI: no answered prompt
is asked for twice (beyond those in flight at the kill), and the result equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml
from datasets import load_from_disk

from st_retrofit.synth import ResponseCache


def _write_recipe(tiny_recipe_data, tmp_path, corpus_file, base_url, name, cache_dir):
    synth = {
        "source": "corpus",
        "corpus": {"path": str(corpus_file)},
        "backend": {"type": "openai", "model": "test-model", "base_url": base_url, "concurrency": 2, "max_retries": 1},
        "templates": ["short-long", "question-answer", "title-body"],
        "pairs_per_document": 3,
        "brainstorm": {"enabled": False},
        "eval_fraction": 0.2,
        "chunk_size": 4,
        "cache_dir": str(cache_dir),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe_data, "name": name, "synth": synth}))
    return path


def _synth(recipe_path):
    return subprocess.Popen(
        [sys.executable, "-m", "st_retrofit", "synth", str(recipe_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_a_killed_synth_run_resumes_without_repeating_calls_and_ends_like_an_uninterrupted_run(
    tiny_recipe_data, tmp_path, corpus_file, fake_server
):
    cache_dir = tmp_path / "cache"
    with fake_server(delay=0.15) as server:
        recipe = _write_recipe(tiny_recipe_data, tmp_path, corpus_file, server.base_url, "killed", cache_dir)
        child = _synth(recipe)
        deadline = time.time() + 120
        while len(server.answered) < 8 and time.time() < deadline and child.poll() is None:
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        first = list(server.answered)
        assert 8 <= len(first) < 27, "the child was not killed in the middle of generation"  # 9 documents x 3
        cached = len(ResponseCache(cache_dir))
        assert cached >= len(first) - 2  # at most the two requests in flight were answered but not stored

        rerun = _synth(recipe)
        assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
        second = server.answered[len(first) :]
    assert len(set(first) & set(second)) <= len(first) - cached
    assert len(set(first) | set(second)) == len(first) + len(second) - len(set(first) & set(second)) == 27

    with fake_server() as server:  # the same recipe, uninterrupted, with an empty cache
        recipe = _write_recipe(tiny_recipe_data, tmp_path, corpus_file, server.base_url, "whole", tmp_path / "c2")
        whole = _synth(recipe)
        assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()
    runs = tmp_path / "runs"
    resumed, uninterrupted = (
        load_from_disk(runs / "killed/synth/dataset"),
        load_from_disk(runs / "whole/synth/dataset"),
    )
    for split in ("train", "eval"):
        assert resumed[split].to_list() == uninterrupted[split].to_list()
    assert len(resumed["train"]) > len(resumed["eval"]) > 0
    assert not set(resumed["train"]["id"]) & set(resumed["eval"]["id"])
