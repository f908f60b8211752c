"""Cost of the retrofit losses against sentence-transformers' MNRL, measured in one run on the same model and data.

1. Training-step time (forward + backward) of RetrofitInfoNCELoss against MultipleNegativesRankingLoss at the same
   batch, steps interleaved so that both see the same machine state (target ratio <= 1.10).
2. Peak memory of CachedRetrofitInfoNCELoss at batch 1024 against batch 64 (target <= 1.5x): each batch size
   runs in its own process; on a GPU the peak is ``torch.cuda.max_memory_allocated``, on a CPU the highest
   resident memory sampled during the step minus what the process held before it. CachedMultipleNegativesRankingLoss is measured the same
   way as the baseline.

    python benchmarks/loss_overhead.py [--model offline:all-MiniLM-L6-v2] [--batch-size 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

TEXTS = [
    "When was the town of Mikaro founded, and by whom?",
    "Mikaro is a town in the Sadu region on the Luse river. It was founded in 1723 and has 12,400 inhabitants.",
    "Dabe is a town in the Miro region on the Kato river. It was founded in 1790 and lives from forestry.",
]


def make_batch(model, batch_size: int, device: str):
    columns = [[f"{text} ({i})" for i in range(batch_size)] for text in TEXTS]
    return [{k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(c).items()} for c in columns]


def make_loss(name: str, model, mini_batch_size: int = 32):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from st_retrofit.losses import CachedRetrofitInfoNCELoss, RetrofitInfoNCELoss

    extras = {"false_negative_margin": 0.1, "teacher_margin": 0.05, "distill_weight": 0.5}
    return {
        "MNRL": lambda: MultipleNegativesRankingLoss(model),
        "Retrofit (extras off)": lambda: RetrofitInfoNCELoss(model),
        "Retrofit (margin+teacher+distill)": lambda: RetrofitInfoNCELoss(model, return_components=False, **extras),
        "CachedMNRL": lambda: CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size),
        "CachedRetrofit": lambda: CachedRetrofitInfoNCELoss(model, mini_batch_size=mini_batch_size, **extras),
    }[name]()


def step(loss, features, labels) -> None:
    loss.model.zero_grad(set_to_none=True)
    value = loss(features, labels)
    (sum(value.values()) if isinstance(value, dict) else value).backward()


def setup(args):
    """The model (on the GPU when there is one), a batch of ``args.batch_size`` rows and teacher scores for it."""
    from st_retrofit.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device)
    model.max_seq_length = 64
    features = make_batch(model, args.batch_size, device)
    teacher = torch.rand(args.batch_size, 2, device=device).sort(dim=1, descending=True).values
    return model, features, teacher, device


def time_steps(args) -> None:
    model, features, teacher, device = setup(args)
    names = ["MNRL", "Retrofit (extras off)", "Retrofit (margin+teacher+distill)"]
    losses = {name: make_loss(name, model) for name in names}
    for name in names:  # warm-up
        step(losses[name], features, teacher if "teacher" in name else None)
    times = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(losses[name], features, teacher if "teacher" in name else None)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["MNRL"])
    print(f"\nTraining step, {args.model}, batch {args.batch_size} x 3 columns, {device}, median of {args.steps}:")
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:<36} {median * 1000:8.1f} ms   ratio vs MNRL {median / base:5.3f}")


def peak_memory_child(args) -> None:
    """Runs in its own process: one training step of ``args.loss`` at ``args.batch_size``; prints JSON."""
    model, features, teacher, device = setup(args)
    loss = make_loss(args.loss, model, args.mini_batch_size)
    labels = teacher if "Retrofit" in args.loss else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(loss, features, labels)
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = peak_rss_growth(lambda: step(loss, features, labels))
    print(json.dumps({"peak_bytes": peak}))


def peak_rss_growth(fn) -> int:
    """Highest resident memory while ``fn`` runs, minus the resident memory before it (sampled every 2 ms).

    The process's own peak (``ru_maxrss``) is useless here: loading the model already set it higher.
    """
    import threading

    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], process.memory_info().rss) - before


def peak_memory(args) -> None:
    print(
        f"\nPeak memory of one training step beyond the loaded model ({args.model}, mini-batch {args.mini_batch_size}):"
    )
    for name in ("CachedMNRL", "CachedRetrofit"):
        peaks = {}
        for batch_size in (64, 1024):
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--model", args.model, "--loss", name,
                 "--batch-size", str(batch_size), "--mini-batch-size", str(args.mini_batch_size)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            peaks[batch_size] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
        ratio = peaks[1024] / max(peaks[64], 1)
        print(
            f"  {name:<16} batch 64: {peaks[64] / 2**20:7.1f} MiB   batch 1024: {peaks[1024] / 2**20:7.1f} MiB"
            f"   ratio 1024/64 {ratio:5.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline:all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.child:
        peak_memory_child(args)
        return
    time_steps(args)
    peak_memory(args)


if __name__ == "__main__":
    main()
