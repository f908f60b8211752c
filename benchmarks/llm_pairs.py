"""How good are a local LLM's pairs? Its queries against the heuristic ones, on the same passages, in one run.

For a sample of corpus passages (the same number per language, seeded), each setting writes one query per passage
through the synth stage's own generator (validation included):

- ``heuristic``: the opening sentence of the passage (``lead-sentence``; what ``recipes/manpages.yaml`` trains on);
- ``free``: the local LLM, zero-shot, free decoding with the JSON prefill (the backend's default);
- ``constrained``: the same, with decoding constrained to the template's JSON schema (``response_format:
  json_schema``);
- ``few-shot``: constrained, with ``--shots`` of the template's worked examples before each request;
- ``completion``: a base model (``--base-llm``, Gemma 3 270M by default) continuing ``--shots`` worked answers
  written out as plain text (``short-long-completion``): the line it writes is the query.

Each kept query is then searched with the teacher over the whole corpus: **round trip** is the share of passages
whose query finds its own passage in the top ``--top-k`` (the filter of Promptagator, and of Qwen3-Embedding's
synthetic data). A query that cannot find its passage teaches nothing; one that finds it by copying its words
teaches little, which is why the heuristic's opening sentences are the bar, not the ceiling. Printed: kept share,
round trip, and round trip of all passages (kept and round trip together), per setting and per language.

    python benchmarks/llm_pairs.py --corpus data/manpages/corpus.jsonl --per-language 12 \\
        --languages en,de,fr,es,ru,ja [--llm offline:smollm2-135m-instruct] [--teacher offline:multilingual-e5-small]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    # name: (template, response_format, few-shot examples, the model: --llm or --base-llm)
    "heuristic": ("lead-sentence", None, 0, None),
    "free": ("short-long", "json_object", 0, "llm"),
    "constrained": ("short-long", "json_schema", 0, "llm"),
    "few-shot": ("short-long", "json_schema", None, "llm"),  # None = --shots
    # A base model through a completion template: worked answers as plain text, the continued line is the query.
    "completion": ("short-long-completion", "none", None, "base_llm"),
}


def sample_passages(path: Path, languages: list[str], per_language: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    by_language = defaultdict(list)
    for row in rows:
        by_language[row["language"]].append(row)
    picked = []
    for language in languages:
        pool = sorted(by_language[language], key=lambda r: r["id"])
        picked += random.Random(f"{seed}/{language}").sample(pool, min(per_language, len(pool)))
    return rows, picked


def generate(setting: str, passages: list[dict], args: argparse.Namespace) -> tuple[dict[str, str], dict, float]:
    from datasets import Dataset

    from st_retrofit.synth import SyntheticDataGenerator, TemplateLibrary, TransformersBackend
    from st_retrofit.synth.config import BrainstormConfig, ValidationConfig

    template, response_format, shots, llm = SETTINGS[setting]
    library = TemplateLibrary()
    backend = None
    if llm is not None:
        backend = TransformersBackend(getattr(args, llm), batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                      response_format=response_format, dtype="float32")  # fmt: skip
    generator = SyntheticDataGenerator(
        backend, library.select([template]), library, ValidationConfig(check_language=True), seed=args.seed,
        few_shot=args.shots if shots is None else shots, brainstorm=BrainstormConfig(enabled=False),
    )  # fmt: skip
    corpus = Dataset.from_list(
        [{"id": p["id"], "text": p["text"], "title": None, "language": p["language"], "parallel_id": None}
         for p in passages]
    )  # fmt: skip
    start = time.perf_counter()
    pairs, report = generator.generate(corpus)
    seconds = time.perf_counter() - start
    if backend is not None:
        backend.close()
    return dict(zip(pairs["id"], pairs["query"], strict=True)), report.to_dict(), seconds


def round_trip(queries: dict[str, str], corpus: list[dict], teacher, top_k: int, cache: dict) -> set[str]:
    """The ids whose query ranks its own passage in the top ``top_k`` of the whole corpus."""
    import torch

    from st_retrofit.models.resolve import role_prompt

    if "documents" not in cache:
        cache["documents"] = teacher.encode([r["text"] for r in corpus], prompt=role_prompt(teacher, "document"),
                                            batch_size=32, convert_to_tensor=True, normalize_embeddings=True,
                                            show_progress_bar=True)  # fmt: skip
        cache["index"] = {row["id"]: i for i, row in enumerate(corpus)}
    ids = list(queries)
    if not ids:
        return set()
    embedded = teacher.encode([queries[i] for i in ids], prompt=role_prompt(teacher, "query"), batch_size=32,
                              convert_to_tensor=True, normalize_embeddings=True)  # fmt: skip
    top = torch.topk(embedded @ cache["documents"].T, k=top_k, dim=1).indices.tolist()
    return {doc_id for doc_id, found in zip(ids, top, strict=True) if cache["index"][doc_id] in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO / "data" / "manpages" / "corpus.jsonl"))
    parser.add_argument("--languages", default="en,de,fr,es,ru,ja")
    parser.add_argument("--per-language", type=int, default=12)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--llm", default="offline:smollm2-135m-instruct", help="the chat model")
    parser.add_argument("--base-llm", default="offline:gemma3-270m", help="the base model (completion setting)")
    parser.add_argument("--teacher", default="offline:multilingual-e5-small")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "llm_pairs.json"))
    args = parser.parse_args()

    from st_retrofit.models.resolve import load_model

    languages = args.languages.split(",")
    corpus, passages = sample_passages(Path(args.corpus), languages, args.per_language, args.seed)
    teacher, cache = load_model(args.teacher), {}
    language_of = {p["id"]: p["language"] for p in passages}
    results = {}
    for setting in args.settings.split(","):
        queries, report, seconds = generate(setting, passages, args)
        found = round_trip(queries, corpus, teacher, args.top_k, cache)
        per_language = {}
        for language in languages:
            total = sum(1 for p in passages if p["language"] == language)
            kept = [i for i in queries if language_of[i] == language]
            per_language[language] = {"passages": total, "kept": len(kept),
                                      "round_trip": sum(1 for i in kept if i in found)}  # fmt: skip
        results[setting] = {
            "seconds": round(seconds, 1), "passages": len(passages), "kept": len(queries), "round_trip": len(found),
            "rejected": report["rejected"], "per_language": per_language,
            "examples": [{"language": language_of[i], "query": queries[i]} for i in list(queries)[:: max(1, len(queries) // 8)]],
        }  # fmt: skip
        print(f"{setting}: kept {len(queries)}/{len(passages)}, round trip {len(found)} ({seconds:.0f} s)",
              file=sys.stderr)  # fmt: skip
    summary = {"llm": args.llm, "base_llm": args.base_llm, "teacher": args.teacher, "top_k": args.top_k, "shots": args.shots,
               "languages": languages, "per_language": args.per_language, "settings": results}  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(summary))


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def table(summary: dict) -> str:
    settings = summary["settings"]
    lines = [
        f"{summary['llm']} against the opening sentence, {summary['per_language']} passages per language; round trip ="
        f" the teacher ({summary['teacher']}) finds the passage in its top {summary['top_k']} of the whole corpus",
        "",
        "| setting | kept | round trip of kept | round trip of all | s |",
        "|---|---|---|---|---|",
    ]
    for name, r in settings.items():
        lines.append(f"| {name} | {_share(r['kept'], r['passages'])} | {_share(r['round_trip'], r['kept'])} | "
                     f"{_share(r['round_trip'], r['passages'])} | {r['seconds']:.0f} |")  # fmt: skip
    lines += ["", "| language | " + " | ".join(f"{n} (kept / round trip)" for n in settings) + " |",
              "|---" * (len(settings) + 1) + "|"]  # fmt: skip
    for language in summary["languages"]:
        cells = [f"{r['per_language'][language]['kept']} / {r['per_language'][language]['round_trip']}"
                 for r in settings.values()]  # fmt: skip
        lines.append(f"| {language} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
