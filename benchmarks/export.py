"""ONNX and int8 without optimum against the torch model, in one run: agreement, encode speed and size.

For multilingual-e5-small, all-MiniLM-L6-v2 and EmbeddingGemma-300m (offline), each cut at 128 tokens: the graph
of ``st_retrofit.export`` in fp32 and with int8 weights (onnxruntime dynamic quantization, per channel), and, with
the ``openvino`` extra, the same graph on OpenVINO in fp32 and with int8 weights (nncf weight compression), against
sentence-transformers' torch encode of the same texts (document prompts, batch 32, every core):

- cosine to the torch embeddings, mean and min, over real multilingual man-page descriptions (the benchmark's
  corpus, 13 languages; ``st-retrofit benchmark build manpages data/manpages`` first) and the export module's sample
  texts;
- encode time and its ratio to torch (the issue's goal: int8 >= 1.5x torch);
- file size against the fp32 weights.

    python benchmarks/export.py [--texts 256] [--models offline:multilingual-e5-small ...]

Writes ``benchmarks/results/export.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("offline:multilingual-e5-small", "offline:all-MiniLM-L6-v2", "offline:embeddinggemma-300m")


def corpus_texts(count: int, seed: int = 0) -> list[str]:
    path = REPO / "data" / "manpages" / "corpus.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: st-retrofit benchmark build manpages data/manpages")
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return [row["text"] for row in random.Random(seed).sample(rows, count)]


def timed_encode(model, texts: list[str]) -> tuple[float, np.ndarray]:
    model.encode_document(texts[:32], batch_size=32)  # warm-up: onnxruntime's first run plans its memory
    started = time.perf_counter()
    embeddings = model.encode_document(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    return time.perf_counter() - started, embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "export.json"))
    args = parser.parse_args()

    from st_retrofit.export import SAMPLE_TEXTS, cosine_agreement
    from st_retrofit.export.backends import ENCODER_BACKENDS, exported_file, openvino_file
    from st_retrofit.models import load_model

    graph_files = {"onnx": lambda model: exported_file(model, int8=False),
                   "onnx-int8": lambda model: exported_file(model, int8=True)}  # fmt: skip
    if ENCODER_BACKENDS["openvino-int8"].installed():
        graph_files |= {"openvino": lambda model: openvino_file(model, int8=False),
                        "openvino-int8": lambda model: openvino_file(model, int8=True)}  # fmt: skip

    texts = corpus_texts(args.texts)
    report = {"texts": len(texts), "max_seq_length": 128, "models": {}}
    for name in args.models:
        torch_model = load_model(name, device="cpu")
        torch_model.max_seq_length = 128
        started = time.perf_counter()
        for make in graph_files.values():  # exported, quantized and converted once per model (cached)
            make(torch_model)
        export_seconds = time.perf_counter() - started
        torch_seconds, reference = timed_encode(torch_model, texts)
        fp32_bytes = sum(p.numel() * 4 for p in torch_model.parameters())
        rows = {"torch": {"seconds": round(torch_seconds, 2), "x torch": 1.0, "MB": round(fp32_bytes / 2**20)}}
        for backend in graph_files:
            model = ENCODER_BACKENDS[backend].prepare(torch_model)
            file = model[0].file  # the graph the backend runs (its OnnxEncoder's or OpenVinoEncoder's)
            seconds, embeddings = timed_encode(model, texts)
            cosine = (embeddings * reference).sum(axis=1)
            rows[backend] = {
                "seconds": round(seconds, 2),
                "x torch": round(torch_seconds / seconds, 2),
                "MB": round(sum(f.stat().st_size for f in (file, file.with_suffix(".bin")) if f.is_file()) / 2**20),
                "cosine_corpus": {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)},
                "cosine_samples": cosine_agreement(torch_model, model, SAMPLE_TEXTS),
            }
        report["models"][name] = {"export_seconds": round(export_seconds, 1), "backends": rows}
        print(f"\n{name} (export, int8 and conversion once: {export_seconds:.0f} s)")
        print(f"{'backend':14s} {'s':>7s} {'x torch':>8s} {'MB':>6s} {'cos mean':>9s} {'cos min':>8s}")
        for backend, row in rows.items():
            cos = row.get("cosine_corpus", {"mean": 1.0, "min": 1.0})
            print(f"{backend:14s} {row['seconds']:7.2f} {row['x torch']:8.2f} {row['MB']:6d} "
                  f"{cos['mean']:9.4f} {cos['min']:8.4f}")  # fmt: skip
        del torch_model
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"\nresults in {args.output}")


if __name__ == "__main__":
    main()
