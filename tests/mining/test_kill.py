"""A real SIGKILL in the middle of mining, then a rerun: it continues from the shards and ends where an
uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from st_retrofit.mining import HardNegativeMiner
from st_retrofit.mining.config import MiningConfig
from st_retrofit.synth import build_demo_dataset

SETTINGS = {"num_negatives": 2, "group_by": "language", "relative_margin": None, "shard_size": 2, "range_max": 6}
CHILD = textwrap.dedent(
    """
    import sys, time
    from sentence_transformers import SentenceTransformer
    from st_retrofit.mining import HardNegativeMiner
    from st_retrofit.mining.config import MiningConfig
    from st_retrofit.synth import build_demo_dataset

    model_path, cache, output = sys.argv[1:4]
    real_write = HardNegativeMiner._write_shard

    def slow_write(stem, columns, stats):
        real_write(stem, columns, stats)
        time.sleep(0.5)  # room for the parent to kill us between two shards, or in the middle of one

    HardNegativeMiner._write_shard = staticmethod(slow_write)
    pairs = build_demo_dataset(languages=["en", "ru"], train_entities=8, eval_entities=2, seed=5)["train"]
    model = SentenceTransformer(model_path, device="cpu")
    HardNegativeMiner(model, MiningConfig(**SETTINGS), seed=1, cache_dir=cache, show_progress_bar=False).mine(
        pairs, output_dir=output
    )
    """
)


def test_a_run_killed_with_sigkill_continues_and_produces_the_same_result(tiny_model, tiny_model_path, tmp_path):
    pairs = build_demo_dataset(languages=["en", "ru"], train_entities=8, eval_entities=2, seed=5)["train"]
    script = tmp_path / "child.py"
    script.write_text(f"SETTINGS = {SETTINGS!r}\n" + CHILD)
    output, cache = tmp_path / "killed", tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_path), str(cache), str(output)],
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while len(list((output / "shards").glob("*.json"))) < 3 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = len(list((output / "shards").glob("*.json")))
    assert 3 <= finished < 8, "the child was not killed in the middle of mining"  # 8 shards in all

    def mine(folder):
        miner = HardNegativeMiner(tiny_model, MiningConfig(**SETTINGS), seed=1, cache_dir=cache,
                                  show_progress_bar=False)  # fmt: skip
        return miner.mine(pairs, output_dir=folder)

    resumed = mine(output)
    assert resumed.report["shards"]["resumed"] >= finished
    assert resumed.report["cache"]["encoded"] == 0  # the child committed every embedding before its first shard
    uninterrupted = mine(tmp_path / "fresh")
    assert {k: v.to_list() for k, v in resumed.dataset.items()} == {
        k: v.to_list() for k, v in uninterrupted.dataset.items()
    }
