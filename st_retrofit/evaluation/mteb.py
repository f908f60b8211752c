"""MTEB evaluation: mteb 2.x tasks and benchmarks by name, and local BEIR-style folders as custom retrieval tasks.

``eval.mteb_tasks`` in a recipe (or :func:`resolve_tasks`) takes, per entry, a folder of such folders (each a task
named ``<folder>-<parent>``, as ``manpages-de-test`` from ``data/manpages/test/``), a benchmark name
(``MTEB(Multilingual, v2)``), a benchmark's tasks of one type (``MTEB(Multilingual, v2):Retrieval``, the paper's
MMTEB multilingual retrieval average), a task name (``MIRACLRetrieval``) or a local folder laid out like BEIR
(``corpus.jsonl`` with ``_id``/``title``/``text``, ``queries.jsonl`` with ``_id``/``text``, ``qrels/<split>.tsv``
with ``query-id``, ``corpus-id``, ``score``). Hub tasks need their data reachable; a folder works offline.

Results are written by mteb itself, in its results layout (``<folder>/results/<model>/<revision>/<Task>.json``),
so mteb's own tools and the leaderboard read them; :func:`comparison` turns them into one table with a column per
model (base, retrofitted, and any baseline results folders given).

Prompts: the model's sentence-transformers prompts are handed to mteb under mteb's names: ``query`` and
``document`` (a ``passage`` prompt, multilingual-e5's name, becomes ``document``), and task prompts
``<Task>-query`` / ``<Task>-document`` as they are (the names :class:`~st_retrofit.mixing.MixingCallback` saves).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.config import ConfigError
from st_retrofit.extras import require_module
from st_retrofit.tables import markdown_table

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

PROMPT_ALIASES = {"passage": "document", "corpus": "document", "queries": "query"}
# "<benchmark>:<task type>" keeps one kind of task of a benchmark, e.g. "MTEB(Multilingual, v2):Retrieval".
TASK_TYPES = (":Retrieval", ":Reranking", ":STS", ":Classification", ":Clustering", ":PairClassification",
              ":BitextMining", ":MultilabelClassification", ":InstructionRetrieval", ":Summarization")  # fmt: skip


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def beir_task(folder: str | Path, split: str = "test", name: str | None = None, language: str = "eng-Latn"):
    """An mteb retrieval task over a local BEIR-style folder (see the module docstring), scored by nDCG@10."""
    import csv

    from datasets import Dataset

    require_module("mteb", "eval.mteb_tasks")
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    folder = Path(folder)
    files = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels" / f"{split}.tsv",
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ConfigError("", f"{folder} is not a BEIR-style folder: missing {', '.join(missing)}")
    task_name = name or folder.name

    class LocalBeirRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            type="Retrieval",
            name=task_name,
            description=f"Local BEIR-style retrieval data in {folder}",
            reference=None,
            dataset={"path": str(folder), "revision": "local"},
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=[language],
            main_score="ndcg_at_10",
            date=None,
            domains=None,
            task_subtypes=None,
            license=None,
            annotations_creators=None,
            dialect=None,
            sample_creation=None,
            bibtex_citation=None,
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            corpus = [
                {"id": str(row["_id"]), "text": row.get("text", ""), "title": row.get("title", "") or ""}
                for row in _read_jsonl(files["corpus"])
            ]
            queries = [{"id": str(row["_id"]), "text": row["text"]} for row in _read_jsonl(files["queries"])]
            relevant: dict[str, dict[str, int]] = {}
            with files["qrels"].open(encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    relevant.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
            self.dataset = {
                "default": {
                    split: RetrievalSplitData(
                        corpus=Dataset.from_list(corpus),
                        queries=Dataset.from_list([q for q in queries if q["id"] in relevant]),
                        relevant_docs=relevant,
                        top_ranked=None,
                    )
                }
            }
            self.data_loaded = True

    return LocalBeirRetrieval()


def resolve_tasks(specs: list[str]) -> list[Any]:
    """mteb task objects for benchmark names, task names and local BEIR-style folders (in that order of lookup
    for names; an existing folder is always a folder).

    Raises:
        ConfigError: naming the entry, with mteb's suggestion when it has one.
    """
    mteb = require_module("mteb", "eval.mteb_tasks")

    tasks = []
    for spec in specs:
        folder = Path(spec).expanduser()
        if folder.is_dir():
            if (folder / "corpus.jsonl").is_file() or not any(folder.glob("*/corpus.jsonl")):
                tasks.append(beir_task(folder))
            else:  # a folder of BEIR folders (a benchmark's test/): each is a task, named with the part
                tasks += [
                    beir_task(sub, name=f"{sub.name}-{folder.name}")
                    for sub in sorted(folder.glob("*/"))
                    if (sub / "corpus.jsonl").is_file()
                ]
            continue
        name, _, task_type = spec.rpartition(":") if spec.endswith(TASK_TYPES) else (spec, "", "")
        try:
            benchmark = mteb.get_benchmark(name)
        except KeyError:
            if task_type:
                raise ConfigError("", f"{spec!r}: no mteb benchmark named {name!r}") from None
        else:
            chosen = [t for t in benchmark.tasks if not task_type or t.metadata.type == task_type]
            if not chosen:
                raise ConfigError("", f"{spec!r}: benchmark {name!r} has no {task_type} task")
            tasks.extend(chosen)
            continue
        try:
            tasks.append(mteb.get_task(spec))
        except KeyError as exc:
            raise ConfigError(
                "",
                f"{spec!r} is neither a folder with corpus.jsonl, queries.jsonl and qrels/, nor an mteb task or "
                f"benchmark ({str(exc).strip(chr(39))})",
            ) from None
    return tasks


def mteb_prompts(model: SentenceTransformer) -> dict[str, str]:
    """The model's prompts under mteb's names (``passage`` -> ``document``; task prompts kept)."""
    prompts = {}
    for name, prompt in (model.prompts or {}).items():
        if not prompt:
            continue
        head, _, role = name.rpartition("-")
        if head and role in PROMPT_ALIASES:
            prompts[f"{head}-{PROMPT_ALIASES[role]}"] = prompt
        else:
            prompts[PROMPT_ALIASES.get(name, name)] = prompt
    return prompts


def run_mteb(
    model: SentenceTransformer,
    label: str,
    tasks: list[Any],
    output_dir: str | Path,
    batch_size: int = 64,
    prediction_folder: str | Path | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``tasks`` and write mteb's results under ``output_dir`` as model ``label``; with
    ``prediction_folder``, mteb also saves each query's ranking there (``<task>_predictions.json``), which
    :mod:`st_retrofit.evaluation.significance` scores per query.

    Returns:
        ``{task name: main score}`` (averaged over the task's splits and subsets, as mteb does).
    """
    mteb = require_module("mteb", "mteb evaluation")
    from mteb.cache import ResultCache
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    model.model_card_data.model_name = label
    wrapped = SentenceTransformerEncoderWrapper(model, model_prompts=mteb_prompts(model))
    result = mteb.evaluate(
        wrapped,
        tasks=tasks,
        cache=ResultCache(str(output_dir)),
        overwrite_strategy="always",
        encode_kwargs={"batch_size": batch_size},
        show_progress_bar=False,
        prediction_folder=str(prediction_folder) if prediction_folder is not None else None,
    )
    return {task.task_name: float(task.get_score()) for task in result.task_results}


def result_files(folder: str | Path) -> dict[str, tuple[Path, Any]]:
    """``{task name: (file, mteb TaskResult)}`` under an mteb results folder (any depth; the newest per task)."""
    TaskResult = require_module("mteb", "reading mteb results").TaskResult

    files: dict[str, tuple[Path, Any]] = {}
    for path in sorted(Path(folder).rglob("*.json"), key=lambda p: p.stat().st_mtime):
        if path.name == "model_meta.json":
            continue
        try:
            result = TaskResult.from_disk(path)
        except Exception:  # not a task result (settings, other JSON)
            continue
        files[result.task_name] = (path, result)
    return files


def read_results(folder: str | Path) -> dict[str, float]:
    """``{task name: main score}`` from an mteb results folder of one model (any depth; the newest file per task)."""
    return {task: float(result.get_score()) for task, (_, result) in result_files(folder).items()}


def comparison(scores: dict[str, dict[str, float]]) -> tuple[dict[str, Any], str]:
    """One row per task, one column per model (``{model: {task: score}}``, first model = reference), plus the
    mean over the tasks every model has; returns the table as JSON-ready data and as Markdown."""
    models = list(scores)
    tasks = sorted({task for model_scores in scores.values() for task in model_scores})
    shared = [task for task in tasks if all(task in scores[m] for m in models)]
    rows = [{"task": task, **{m: scores[m].get(task) for m in models}} for task in tasks]
    means = {m: sum(scores[m][t] for t in shared) / len(shared) if shared else None for m in models}
    headers = ["task", *models] + ([f"Δ {models[-1]} vs {models[0]}"] if len(models) > 1 else [])
    lines = []
    for row in rows + [{"task": f"mean ({len(shared)} shared tasks)", **means}]:
        cells = [f"{row[m]:.4f}" if row[m] is not None else "-" for m in models]
        if len(models) > 1:
            first, last = row[models[0]], row[models[-1]]
            cells.append(f"{last - first:+.4f}" if first is not None and last is not None else "-")
        lines.append([row["task"], *cells])
    return {"models": models, "rows": rows, "mean": means, "shared_tasks": shared}, markdown_table(headers, lines)
