"""What a strong teacher costs to mine with, and what bf16 and int8 save, on the man-page recipe's own pairs, in one run.

Mines the pairs of ``recipes/manpages-teacher.yaml`` (its synth stage's train split: ~1,300 queries, ~1,300
documents, 13 language groups) with the recipe's mining section, each time on an empty embedding cache:

1. ``self``: the student as its own teacher (``offline:multilingual-e5-small``, fp32): the self-teacher recipe;
2. ``teacher fp32``: ``offline:embeddinggemma-300m`` in fp32;
3. ``teacher bf16``: the same in bfloat16 (``mining.teacher_dtype: bfloat16``);
4. ``teacher rerun``: the bf16 run again on its filled cache (encode-once: nothing is encoded);
5. ``teacher onnx-int8``: the teacher's ONNX graph with int8 weights (``mining.backend: onnx-int8``), exported and
   quantized once before the timed run (the export's own time is printed apart: it is paid once per teacher);
6. ``teacher openvino`` and ``teacher openvino-int8`` (when the ``openvino`` extra is installed): the same graph
   converted to OpenVINO, in fp32 and with int8 weights (``mining.backend: openvino`` / ``openvino-int8``),
   converted once before the timed runs too.

It prints the wall time of each against ``self`` (the issue's bound: the teacher within 3x), the agreement of the
bf16, int8 and OpenVINO embeddings with the fp32 ones (cosine, mean and min, over every encoded text) and the share of mined
negatives each agrees on with fp32, and writes ``benchmarks/results/teacher_mining.json``. The ratio against
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


def mine(recipe, pairs, teacher: str, dtype: str, backend: str, cache: Path) -> tuple[float, object, dict]:
    """Load, encode, search and filter as the mine stage does; returns wall seconds, the result and the caches."""
    from st_retrofit.export.backends import ENCODER_BACKENDS
    from st_retrofit.mining import HardNegativeMiner
    from st_retrofit.models import load_model

    config = recipe.mining.model_copy(update={"teacher": teacher, "teacher_dtype": dtype, "backend": backend})
    started = time.perf_counter()
    model = load_model(teacher, device="cpu")
    model.max_seq_length = config.max_seq_length
    model = ENCODER_BACKENDS[backend].prepare(model, dtype)
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

    from st_retrofit.export.backends import ENCODER_BACKENDS, exported_file, openvino_file
    from st_retrofit.models import load_model
    from st_retrofit.recipe import load_recipe
    from st_retrofit.runfolder import PAIRS

    recipe = load_recipe(args.recipe)
    pairs = load_from_disk(str(PAIRS.at(recipe.run_dir)))["train"]
    gemma = "offline:embeddinggemma-300m"
    started = time.perf_counter()
    teacher_model = load_model(gemma, device="cpu")
    exported_file(teacher_model, int8=True)  # once per teacher, cached: not part of a mine run
    export_seconds = round(time.perf_counter() - started, 1)
    print(f"onnx export + int8 quantization of the teacher: {export_seconds} s (once; cached)")
    backends = ["onnx-int8"]
    if ENCODER_BACKENDS["openvino-int8"].installed():
        started = time.perf_counter()
        openvino_file(teacher_model, int8=True)
        print(f"OpenVINO conversion + int8 weights: {time.perf_counter() - started:.1f} s (once; cached)")
        backends += ["openvino", "openvino-int8"]
    del teacher_model
    runs, results = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for label, teacher, dtype, backend, cache in (
            ("self", "offline:multilingual-e5-small", "float32", "torch", "self"),
            ("teacher fp32", gemma, "float32", "torch", "fp32"),
            ("teacher bf16", gemma, "bfloat16", "torch", "bf16"),
            ("teacher rerun", gemma, "bfloat16", "torch", "bf16"),
            *((f"teacher {backend}", gemma, "float32", backend, backend) for backend in backends),
        ):
            seconds, result, caches = mine(recipe, pairs, teacher, dtype, backend, Path(root) / cache)
            runs[label] = {"seconds": round(seconds, 1), "encoded": caches["encoded"], "reused": caches["reused"]}
            results[label] = (result, caches)
            print(f"{label:14s} {seconds:7.1f} s  encoded {caches['encoded']:5d}  reused {caches['reused']:5d}")
        agreement = {}
        compared = ["teacher bf16", *(f"teacher {backend}" for backend in backends)]
        for label in compared:
            agreement[label] = {}
            for role in ("query", "document"):
                fp32 = embeddings(results["teacher fp32"][1][f"{role}_namespace"])
                other = embeddings(results[label][1][f"{role}_namespace"])
                cos = np.array([float(fp32[k] @ other[k]) for k in fp32])
                agreement[label][role] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}
    fp32_pools = negatives(results["teacher fp32"][0])
    overlaps = {}
    for label in compared:
        pools = negatives(results[label][0])
        shared = [k for k in fp32_pools if k in pools]
        kept = sum(len(fp32_pools[k] & pools[k]) for k in shared)
        overlaps[label] = round(kept / max(1, sum(len(fp32_pools[k]) for k in shared)), 4)
    self_seconds = runs["self"]["seconds"]
    report = {
        "runs": runs,
        "ratio_vs_self": {label: round(run["seconds"] / self_seconds, 2) for label, run in runs.items()},
        "export_seconds": export_seconds,
        "cosine_to_fp32": agreement,
        "pool_overlap_top10_with_fp32": overlaps,
        "rows": {label: sum(len(s) for s in r[0].dataset.values()) for label, r in results.items()},
    }
    print(json.dumps(report, indent=2))
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
