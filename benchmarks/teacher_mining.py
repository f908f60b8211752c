"""What a strong teacher costs to mine with, and what bf16 saves, on the man-page recipe's own pairs, in one run.

Mines the pairs of ``recipes/manpages-teacher.yaml`` (its synth stage's train split: ~1,300 queries, ~1,300
documents, 13 language groups) with the recipe's mining section, each time on an empty embedding cache:

1. ``self``: the student as its own teacher (``offline:multilingual-e5-small``, fp32): the self-teacher recipe;
2. ``teacher fp32``: ``offline:embeddinggemma-300m`` in fp32;
3. ``teacher bf16``: the same in bfloat16 (``mining.teacher_dtype: bfloat16``);
4. ``teacher rerun``: the bf16 run again on its filled cache (encode-once: nothing is encoded).

It prints the wall time of each against ``self`` (the issue's bound: the teacher within 3x), the agreement of the
bf16 embeddings with the fp32 ones (cosine, mean and min, over every encoded text) and the share of mined negatives
that bf16 and fp32 agree on, and writes ``benchmarks/results/teacher_mining.json``. The ratio against
sentence-transformers' own miner is ``benchmarks/mining.py``'s (same encoder path, MiniLM).

    st-retrofit run recipes/manpages-teacher.yaml --stages synth     # the pairs (seconds)
    python benchmarks/teacher_mining.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def mine(recipe, pairs, teacher: str, dtype: str, cache: Path) -> tuple[float, object, dict]:
    """Load, encode, search and filter as the mine stage does; returns wall seconds, the result and the caches."""
    import torch

    from st_retrofit.mining import HardNegativeMiner
    from st_retrofit.models import load_model

    config = recipe.mining.model_copy(update={"teacher": teacher, "teacher_dtype": dtype})
    started = time.perf_counter()
    model = load_model(teacher, device="cpu")
    model.max_seq_length = config.max_seq_length
    if dtype != "float32":
        model.to(getattr(torch, dtype))
    miner = HardNegativeMiner(model, config, seed=recipe.seed, cache_dir=cache, teacher_name=teacher)
    with tempfile.TemporaryDirectory() as work:
        result = miner.mine(pairs, output_dir=work)
    return time.perf_counter() - started, result, result.report["cache"]


def negatives(result) -> dict[tuple[str, str], set[str]]:
    """The pool of each (query, document) row."""
    out = {}
    for split in result.dataset.values():
        for row in split:
            out[(row["query"], row["document"])] = set(row["negatives"][:10])
    return out


def embeddings(namespace: str) -> dict[bytes, np.ndarray]:
    from st_retrofit.mining.cache import EmbeddingTable, read_index

    names, keys, shards, rows = read_index(Path(namespace))
    dim = json.loads((Path(namespace) / "meta.json").read_text())["dim"]
    table = EmbeddingTable(Path(namespace), names, shards, rows, dim).read().astype(np.float32)
    return dict(zip(keys.tolist(), table, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "manpages-teacher.yaml"))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "teacher_mining.json"))
    args = parser.parse_args()

    from datasets import load_from_disk

    from st_retrofit.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    pairs = load_from_disk(str(recipe.run_dir / "synth" / "dataset"))["train"]
    runs, results = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for label, teacher, dtype, cache in (
            ("self", "offline:multilingual-e5-small", "float32", "self"),
            ("teacher fp32", "offline:embeddinggemma-300m", "float32", "fp32"),
            ("teacher bf16", "offline:embeddinggemma-300m", "bfloat16", "bf16"),
            ("teacher rerun", "offline:embeddinggemma-300m", "bfloat16", "bf16"),
        ):
            seconds, result, caches = mine(recipe, pairs, teacher, dtype, Path(root) / cache)
            runs[label] = {"seconds": round(seconds, 1), "encoded": caches["encoded"], "reused": caches["reused"]}
            results[label] = (result, caches)
            print(f"{label:14s} {seconds:7.1f} s  encoded {caches['encoded']:5d}  reused {caches['reused']:5d}")
        agreement = {}
        for role in ("query", "document"):
            fp32 = embeddings(results["teacher fp32"][1][f"{role}_namespace"])
            bf16 = embeddings(results["teacher bf16"][1][f"{role}_namespace"])
            cos = np.array([float(fp32[k] @ bf16[k]) for k in fp32])
            agreement[role] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}
    fp32_pools, bf16_pools = negatives(results["teacher fp32"][0]), negatives(results["teacher bf16"][0])
    shared = [k for k in fp32_pools if k in bf16_pools]
    overlap = sum(len(fp32_pools[k] & bf16_pools[k]) for k in shared) / max(1, sum(len(fp32_pools[k]) for k in shared))
    self_seconds = runs["self"]["seconds"]
    report = {
        "runs": runs,
        "ratio_vs_self": {label: round(run["seconds"] / self_seconds, 2) for label, run in runs.items()},
        "bf16_cosine_to_fp32": agreement,
        "bf16_pool_overlap_top10": round(overlap, 4),
        "rows": {label: sum(len(s) for s in r[0].dataset.values()) for label, r in results.items()},
    }
    print(json.dumps(report, indent=2))
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
