"""Training throughput of st-retrofit's loss, sampler and collator against plain sentence-transformers MNRL,
measured in one run on the same 300M-class encoder, data shape and precision.

The model is an XLM-RoBERTa-base-shaped encoder (12 layers, 768 wide, 250k vocabulary: 278M parameters, the
shape of multilingual-e5-base and of the paper's ~300M class) with random weights and a word-level tokenizer, so
nothing is downloaded and every text has an exact token length. Queries are 8 to 32 tokens and documents 96 to
``--doc-len`` tokens, uniformly.

- ``st``: ``MultipleNegativesRankingLoss``, the stock collator and batch sampler, rows
  ``(anchor, positive, negative_1..k)`` with the negatives fixed beforehand.
- ``st-retrofit``: ``RetrofitInfoNCELoss`` (false-negative margin, teacher masking, distillation),
  ``TemperatureBatchSampler`` over 4 language groups with duplicate checks, and ``RetrofitDataCollator`` drawing
  ``k`` teacher-weighted negatives per row and step from a 20-candidate pool.

- ``st-retrofit fast`` (with ``--fast``): the same, with the speed settings a recipe can turn on: batches of
  similar lengths (``mixing.length_buckets``, ``--length-buckets`` batches per window: less padding), the fused
  AdamW on CUDA (``optim: adamw_torch_fused``) and, with ``--compile``, ``torch_compile``.

Both train through the stock ``SentenceTransformerTrainer`` with the same ``SentenceTransformerTrainingArguments``
(``bf16`` autocast on CUDA, AdamW, gradient clipping), the same batch size and the same number of texts per row.
Runs alternate (st, ours, st, ours...) and each reports examples per second over its steps after the warm-up; the
best run of each side counts, and the ratio is ours over st (target >= 0.95). A third row runs the same MNRL steps
in a hand-written loop over batches collated and moved to the device beforehand: the ceiling of any data path.

Model FLOPs utilization counts the matrix products of the padded batches the model actually ran (forward and
backward, 3x the forward's ``2 * params * tokens`` plus attention's ``4 * layers * seq**2 * width`` per sequence),
over the datasheet's dense bf16 peak (``--peak-tflops``, 989 for an H100 SXM) and over a bf16 matrix product
measured on the same GPU in the same run.

With ``--profile FILE``, three steps of the bare loop run under ``torch.profiler`` and FILE gets the table of the
operators that take the most time (self time, device time on CUDA): where a step goes.

    python benchmarks/train_throughput.py [--batch-size 64] [--negatives 3] [--steps 40] [--warmup 10] [--repeats 2]
                                         [--workers 0] [--fast [--length-buckets 8] [--compile]]
                                         [--profile profile.md] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

GROUPS = ("en", "de", "ja", "sw")
POOL = 20


def build_model(folder: Path, layers: int, width: int, vocab: int, max_len: int):
    """A random XLM-R-shaped encoder and a word-level tokenizer with ``vocab`` words (one token each)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(vocab - len(specials))])}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    hf = folder / "hf"
    fast.save_pretrained(hf)
    config = XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        intermediate_size=4 * width,
        max_position_embeddings=max_len + 2 + 2,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=max_len)
    return SentenceTransformer(modules=[transformer, Pooling(width, "mean"), Normalize()])


def make_data(rows: int, negatives: int, vocab: int, doc_len: int, seed: int = 0):
    """The same texts in both layouts: st's fixed n-tuples, and our pools split into language groups."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(vocab - 4)}" for _ in range(rng.randint(lo, hi)))

    queries = [text(8, 32) for _ in range(rows)]
    documents = [text(96, doc_len) for _ in range(rows)]
    pools = [[text(96, doc_len) for _ in range(POOL)] for _ in range(rows)]
    scores = [[0.9] + sorted((rng.uniform(0.3, 0.85) for _ in range(POOL)), reverse=True) for _ in range(rows)]

    st = {"anchor": queries, "positive": documents}
    for j in range(negatives):
        st[f"negative_{j + 1}"] = [pool[j] for pool in pools]
    ours = DatasetDict()
    for g, group in enumerate(GROUPS):
        index = range(g, rows, len(GROUPS))
        ours[group] = Dataset.from_dict({
            "query": [queries[i] for i in index],
            "document": [documents[i] for i in index],
            "negatives": [pools[i] for i in index],
            "negative_ids": [list(range(i * POOL, (i + 1) * POOL)) for i in index],
            "label": [scores[i] for i in index],
            "task": ["retrieval"] * len(index),
        })  # fmt: skip
    return Dataset.from_dict(st), ours


def step_recorder(model):
    """A callback that times each step and records the (rows, padded length) of every text column the model ran
    in it (a forward hook, so collation may happen in dataloader workers)."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.shapes: list[list[tuple[int, int]]] = []
            self.current: list[tuple[int, int]] = []
            self.hook = model.register_forward_pre_hook(self._record)

        def _record(self, module, inputs):
            self.current.append(tuple(inputs[0]["input_ids"].shape))

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.shapes.append(self.current)
            self.current = []

        def on_train_end(self, args, state, control, **kwargs):
            self.hook.remove()

    return StepRecorder()


def train_flops(shapes: list[list[tuple[int, int]]], layers: int, width: int) -> float:
    """Matrix-product FLOPs of forward + backward over the recorded batches (embedding lookups excluded)."""
    per_token = 2 * layers * (4 * width * width + 2 * width * 4 * width)
    total = 0.0
    for batch in shapes:
        for rows, length in batch:
            total += per_token * rows * length + 4 * layers * rows * length * length * width
    return 3 * total


def run_one(side: str, model, initial_state, data, args, output_dir: Path) -> dict:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from st_retrofit.losses import RetrofitInfoNCELoss
    from st_retrofit.mixing import MixingCallback, RetrofitDataCollator, TemperatureBatchSampler

    model.load_state_dict(initial_state)
    cuda = torch.cuda.is_available()
    steps = args.warmup + args.steps
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-5,
        bf16=cuda,
        save_strategy="no",
        logging_steps=10**6,
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=True,
        dataloader_num_workers=args.workers,
        seed=0,
        optim="adamw_torch_fused" if side == "st-retrofit fast" and cuda else "adamw_torch",
        torch_compile=side == "st-retrofit fast" and args.compile,
    )
    timer, callbacks = step_recorder(model), []
    if side == "st":
        loss = MultipleNegativesRankingLoss(model)
        collator = SentenceTransformerDataCollator(model.preprocess)
        train = data[0]
    else:
        loss = RetrofitInfoNCELoss(model, false_negative_margin=0.1, teacher_margin=0.05, distill_weight=0.5)
        collator = RetrofitDataCollator(
            model.preprocess, num_negatives=args.negatives, range_max=10, sampling="teacher"
        )
        train = data[1]
        training_args.multi_dataset_batch_sampler = TemperatureBatchSampler.configure(
            alpha=0.5, no_duplicates=True, dataset_names=list(train),
            length_buckets=args.length_buckets if side == "st-retrofit fast" else 0,
        )  # fmt: skip
        callbacks.append(MixingCallback())
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        loss=loss,
        data_collator=collator,
        callbacks=[timer, *callbacks],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    timed = timer.times[args.warmup - 1 :]
    seconds = timed[-1] - timed[0]
    shapes = timer.shapes[args.warmup :]
    return {
        "side": side,
        "examples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "seconds": seconds,
        "wall_s": wall,
        "padded_tokens_per_step": statistics.mean(sum(r * n for r, n in b) for b in shapes),
        "flops": train_flops(shapes, args.layers, args.width),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def model_only(model, initial_state, data, args) -> dict:
    """The same MNRL steps with the batches collated and on the device beforehand and no trainer: a hand-written
    loop of bf16 autocast forward, backward, gradient clipping and AdamW. What separates the trainer runs from this
    is the data path and the trainer's own work per step."""
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model.load_state_dict(initial_state)
    device = model.device
    collator = SentenceTransformerDataCollator(model.preprocess)
    rows = data[0]
    batches, shapes = [], []
    for step in range(args.warmup + args.steps):
        batch = collator([rows[i] for i in range(step * args.batch_size, (step + 1) * args.batch_size)])
        shapes.append([tuple(v.shape) for k, v in batch.items() if k.endswith("input_ids")])
        batches.append({k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
    columns = [k[: -len("_input_ids")] for k in batches[0] if k.endswith("_input_ids")]
    loss = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    model.train()

    def step(batch) -> None:
        features = [{k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in columns]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            value = loss(features, None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for batch in batches:
        step(batch)
        times.append(time.perf_counter())
    if args.profile:
        profile_steps(step, batches[args.warmup : args.warmup + 3], device.type, Path(args.profile))
    seconds = times[-1] - times[args.warmup - 1]
    timed = shapes[args.warmup :]
    return {
        "side": "model only",
        "examples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "seconds": seconds,
        "padded_tokens_per_step": statistics.mean(sum(r * n for r, n in b) for b in timed),
        "flops": train_flops(timed, args.layers, args.width),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def profile_steps(step, batches, device_type: str, path: Path, rows: int = 20) -> None:
    """Run ``batches`` under ``torch.profiler`` and write the operators with the most self time as a table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for batch in batches:
            step(batch)
    key = "self_cuda_time_total" if device_type == "cuda" else "self_cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    lines = [
        f"Where {len(batches)} steps of the bare loop go ({device_type}, self time per operator):",
        "",
        "| operator | calls | self time ms | share |",
        "|---|---|---|---|",
    ]
    for event in events[:rows]:
        value = getattr(event, key)
        lines.append(f"| `{event.key}` | {event.count} | {value / 1000:.1f} | {value / total:.1%} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def matmul_tflops() -> float | None:
    """A measured bf16 matrix-product rate on this GPU (median of 20, 8192^3), the ceiling MFU is also read against."""
    if not torch.cuda.is_available():
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    parser.add_argument(
        "--workers", type=int, default=0, help="dataloader_num_workers (collation off the main process)"
    )
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=250_002)
    parser.add_argument("--doc-len", type=int, default=256, help="longest document, in tokens (= max_seq_length)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak of the GPU")
    parser.add_argument("--fast", action="store_true", help="add the 'st-retrofit fast' side (see above)")
    parser.add_argument("--length-buckets", type=int, default=8, help="fast side: batches per length window")
    parser.add_argument("--compile", action="store_true", help="fast side: torch_compile")
    parser.add_argument("--profile", help="write a torch.profiler table of three bare-loop steps here")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = (args.warmup + args.steps + 2) * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp), args.layers, args.width, args.vocab, args.doc_len)
        if torch.cuda.is_available():
            model.to("cuda")
        params = sum(p.numel() for p in model.parameters())
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        data = make_data(rows, args.negatives, args.vocab, args.doc_len)
        results = []
        for _ in range(args.repeats):
            for side in ("st", "st-retrofit", *(["st-retrofit fast"] if args.fast else [])):
                result = run_one(side, model, initial, data, args, Path(tmp) / "out")
                results.append(result)
                print(f"  {side:<12} {result['examples_per_s']:8.1f} examples/s  {result['step_ms']:7.1f} ms/step")
        results.append(model_only(model, initial, data, args))
    ceiling = matmul_tflops()

    settings = {key: value for key, value in vars(args).items() if key != "output"}
    summary = {"device": device, "parameters": params, "settings": settings, "matmul_tflops": ceiling}
    print(f"\nTraining throughput, {params / 1e6:.0f}M-parameter encoder, {device}, bf16={torch.cuda.is_available()},")
    print(f"batch {args.batch_size} x (query, positive, {args.negatives} negatives), {args.steps} steps per run after")
    print(f"{args.warmup} warm-up steps, best of {args.repeats} runs per side (runs alternate):\n")
    print(
        "| side | examples/s | ms/step | padded tokens/step | TFLOP/s | MFU (datasheet) | MFU (measured matmul) | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    names = {
        "st": "sentence-transformers MNRL",
        "st-retrofit": "st-retrofit loss + sampler + collator",
        **(
            {
                "st-retrofit fast": "st-retrofit + length buckets"
                + (", fused AdamW" if torch.cuda.is_available() else "")
                + (", compile" if args.compile else "")
            }
            if args.fast
            else {}
        ),  # fmt: skip
        "model only": "model only (MNRL, no trainer, batches on the GPU beforehand)",
    }
    for side, name in names.items():
        runs = [r for r in results if r["side"] == side]
        top = max(runs, key=lambda r: r["examples_per_s"])
        tflops = top["flops"] / top["seconds"] / 1e12
        top["tflops"], top["mfu"] = tflops, tflops / args.peak_tflops
        top["mfu_measured"] = tflops / ceiling if ceiling else None
        best[side] = top
        memory = f"{top['peak_memory_gib']:.1f}" if top["peak_memory_gib"] is not None else "-"
        measured = f"{top['mfu_measured']:.1%}" if ceiling else "-"
        print(
            f"| {name} | {top['examples_per_s']:.1f} | {top['step_ms']:.1f} | {top['padded_tokens_per_step']:.0f} "
            f"| {tflops:.1f} | {top['mfu']:.1%} | {measured} | {memory} |"
        )
    ratio = best["st-retrofit"]["examples_per_s"] / best["st"]["examples_per_s"]
    # Our collator pads each column to its own batch's longest text, like the stock one; the token counts differ
    # only by the negatives drawn, so the ratio is also reported per padded token.
    token_ratio = ratio * best["st-retrofit"]["padded_tokens_per_step"] / best["st"]["padded_tokens_per_step"]
    print(f"\nratio st-retrofit / st, examples per second: {ratio:.3f} (target >= 0.95)")
    print(f"ratio st-retrofit / st, padded tokens per second: {token_ratio:.3f}")
    if args.fast:
        fast = best["st-retrofit fast"]["examples_per_s"] / best["st"]["examples_per_s"]
        print(f"ratio st-retrofit fast / st, examples per second: {fast:.3f} (target >= 1.5)")
        summary["fast_ratio"] = fast
    if ceiling:
        print(f"bf16 matmul measured on this GPU: {ceiling:.0f} TFLOP/s (datasheet {args.peak_tflops:.0f})")
    summary.update(runs=results, ratio=ratio, token_ratio=token_ratio)
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
