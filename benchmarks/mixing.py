"""Cost of the mixing parts against sentence-transformers' own data path, measured in one run on the same data.

1. Collation: RetrofitDataCollator drawing 3 negatives per row from a 20-candidate pool (teacher-weighted, with a
   task prompt) against the stock SentenceTransformerDataCollator on the same rows already cut to 3 negatives,
   batch 64, the real all-MiniLM-L6-v2 tokenizer; calls interleaved (target ratio <= 1.25). The training step of
   MNRL on one such batch is timed too, to show what share of a step collation is.
2. Batch sampling: one epoch of TemperatureBatchSampler (duplicate checks on) over 8 datasets against the stock
   ProportionalBatchSampler over NoDuplicatesBatchSampler children, the trainer's default multi-dataset path with
   duplicate checks; construction included (target ratio <= 1.0).

    python benchmarks/mixing.py [--rows 200000] [--batches 30] [--part collate|sample|all]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

WORDS = (
    "river town founded region people market bridge winter harbor valley school museum railway forest mountain "
    "island century church castle festival bakery library theatre garden station mayor coast village tower"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f" {rng.randrange(10**6)}"


def pool_rows(count: int, pool: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        scores = sorted((rng.uniform(0.3, 0.85) for _ in range(pool)), reverse=True)
        rows.append({
            "query": sentence(rng, 8),
            "document": sentence(rng, 40),
            "negatives": [sentence(rng, 40) for _ in range(pool)],
            "negative_ids": list(range(pool)),
            "label": [0.9, *scores],
            "task": "qa",
        })  # fmt: skip
    return rows


def bench_collate(args) -> dict:
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from st_retrofit.mixing import RetrofitDataCollator
    from st_retrofit.models import load_model

    model = load_model(args.model, device="cpu")
    rows = pool_rows(args.batch_size * args.batches, pool=20)
    ntuples = [
        {
            "query": r["query"],
            "document": r["document"],
            **{f"negative_{j + 1}": r["negatives"][j] for j in range(3)},
            "label": r["label"][:4],
        }
        for r in rows
    ]
    ours = RetrofitDataCollator(
        model.preprocess,
        num_negatives=3,
        range_max=10,
        sampling="teacher",
        prompts={"qa": "Given a question, retrieve the passage that answers it: "},
    )
    # The same prompt on the same column: the stock collator takes {column: prompt}.
    stock = SentenceTransformerDataCollator(
        model.preprocess, prompts={"query": "Given a question, retrieve the passage that answers it: "}
    )
    times = {"stock": [], "ours": []}
    for b in range(args.batches):
        chunk = slice(b * args.batch_size, (b + 1) * args.batch_size)
        for name, collator, data in (("stock", stock, ntuples), ("ours", ours, rows)):
            start = time.perf_counter()
            collator(data[chunk])
            times[name].append(time.perf_counter() - start)

    loss = MultipleNegativesRankingLoss(model)
    batch = stock(ntuples[: args.batch_size])
    features = [
        {k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in ntuples[0] if c != "label"
    ]
    step_times = []
    for _ in range(3):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss(features, None).backward()
        step_times.append(time.perf_counter() - start)

    stock_ms = 1000 * statistics.median(times["stock"])
    ours_ms = 1000 * statistics.median(times["ours"])
    step_ms = 1000 * statistics.median(step_times)
    return {
        "batch_size": args.batch_size,
        "stock_collator_ms": round(stock_ms, 2),
        "retrofit_collator_ms": round(ours_ms, 2),
        "ratio": round(ours_ms / stock_ms, 3),
        "mnrl_step_ms": round(step_ms, 1),
        "retrofit_collator_share_of_step": round(ours_ms / (ours_ms + step_ms), 4),
    }


def sampler_data(total: int):
    from datasets import Dataset, DatasetDict

    rng = random.Random(1)
    sizes = [total // 2, total // 4, total // 8, total // 16, total // 32, total // 64, total // 128]
    sizes.append(total - sum(sizes))
    splits = {}
    for i, size in enumerate(sizes):
        queries = [f"question {i}-{j} {rng.choice(WORDS)}" for j in range(size)]
        documents = [f"passage {i}-{j} " + " ".join(rng.choice(WORDS) for _ in range(12)) for j in range(size)]
        for j in range(0, size, 50):  # some repeated documents, so the duplicate checks have work to do
            documents[j] = f"shared passage {j % 500}"
        splits[f"set{i}"] = Dataset.from_dict({"query": queries, "document": documents})
    return DatasetDict(splits)


def bench_sample(args) -> dict:
    import torch
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler, ProportionalBatchSampler
    from torch.utils.data import ConcatDataset

    from st_retrofit.mixing import TemperatureBatchSampler

    data = sampler_data(args.rows)
    concat = ConcatDataset(list(data.values()))

    def children():
        return [
            NoDuplicatesBatchSampler(split, batch_size=args.batch_size, drop_last=True, generator=torch.Generator())
            for split in data.values()
        ]

    def stock() -> int:
        sampler = ProportionalBatchSampler(concat, children(), generator=torch.Generator(), seed=0)
        sampler.set_epoch(0)
        return sum(1 for _ in sampler)

    def ours() -> int:
        sampler = TemperatureBatchSampler(concat, children(), seed=0, alpha=1.0, dataset_names=list(data))
        sampler.set_epoch(0)
        return sum(1 for _ in sampler)

    result = {"rows": args.rows, "datasets": len(data), "batch_size": args.batch_size}
    for name, run in (("stock", stock), ("ours", ours)):
        start = time.perf_counter()
        result[f"{name}_batches"] = run()
        result[f"{name}_epoch_s"] = round(time.perf_counter() - start, 2)
    result["ratio"] = round(result["ours_epoch_s"] / result["stock_epoch_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline:all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--part", choices=["collate", "sample", "all"], default="all")
    args = parser.parse_args()
    results = {}
    if args.part in ("collate", "all"):
        results["collate"] = bench_collate(args)
        print(json.dumps({"collate": results["collate"]}))
    if args.part in ("sample", "all"):
        results["sample"] = bench_sample(args)
        print(json.dumps({"sample": results["sample"]}))
    if "collate" in results:
        c = results["collate"]
        print(
            f"collation, batch {c['batch_size']}: RetrofitDataCollator {c['retrofit_collator_ms']} ms / stock "
            f"{c['stock_collator_ms']} ms = {c['ratio']} (target <= 1.25); "
            f"{100 * c['retrofit_collator_share_of_step']:.1f}% of a CPU MNRL step"
        )
    if "sample" in results:
        s = results["sample"]
        print(
            f"one epoch over {s['rows']} rows in {s['datasets']} datasets: TemperatureBatchSampler "
            f"{s['ours_epoch_s']} s / Proportional+NoDuplicates {s['stock_epoch_s']} s = {s['ratio']} (target <= 1.0)"
        )


if __name__ == "__main__":
    main()
