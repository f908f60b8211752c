"""The ``synth`` stage: write the training and held-out pairs of a recipe to the run folder.

``source: demo`` renders the embedded demo facts. ``source: corpus`` reads the user's passages, holds out
``eval_fraction`` of the documents (chosen by a hash of their id, so the split survives reruns and a growing
corpus), and generates pairs for both splits with the recipe's templates and backend. Answers are cached outside
the run folder, so a rerun after a kill or a recipe change pays only for prompts never answered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from st_retrofit.config import ConfigError, keyed
from st_retrofit.files import save_dataset
from st_retrofit.runfolder import PAIRS, UNLABELED
from st_retrofit.synth.demo import build_demo_dataset

if TYPE_CHECKING:
    from datasets import Dataset

    from st_retrofit.synth.config import SynthConfig
    from st_retrofit.synth.templates import SynthTemplate, TemplateLibrary

logger = logging.getLogger(__name__)


def select_templates(config: SynthConfig) -> tuple[TemplateLibrary, list[SynthTemplate]]:
    """The library (shipped plus ``template_dirs``) and the templates ``config.templates`` selects.

    Raises:
        ConfigError: a bad template folder or file, an unknown name, or templates the backend cannot run.
    """
    from st_retrofit.synth.templates import TemplateLibrary, TemplateLibraryError

    try:
        library = TemplateLibrary(config.template_dirs)
    except TemplateLibraryError as exc:
        raise ConfigError("template_dirs", str(exc)) from None
    runs = config.backend.kind.template_kinds(config.backend)
    try:
        templates = library.select(config.templates, kinds=runs)
    except KeyError as exc:
        raise ConfigError("templates", exc.args[0]) from None
    # Heuristic templates run without a backend, beside any; the others need one that runs their kind.
    others = [t.name for t in templates if t.kind_entry.needs_llm and t.kind not in runs]
    if others:
        runnable = ", ".join(t.name for t in library if t.kind in runs and t.kind_entry.writes_pairs)
        raise ConfigError(
            "templates", f"{others} are not {' or '.join(runs)} templates, which the {config.backend.type} backend "
            f"runs as set ({runnable}); pick those, or set synth.backend.type (openai, transformers) and "
            "prompt_format (chat: llm templates, completion: completion templates) to run them"
        )  # fmt: skip
    return library, templates


def is_held_out(doc_id: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a hash of its id, not its position."""
    value = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little") / 2**64
    return value < fraction


def synthesize_corpus(config: SynthConfig, seed: int, output_dir: str | Path) -> Path:
    """``source: corpus``: generate, validate and save the ``train`` and ``eval`` splits and ``report.json``."""
    from datasets import DatasetDict

    from st_retrofit.files import cache_dir
    from st_retrofit.synth.cache import ResponseCache
    from st_retrofit.synth.corpus import load_corpus
    from st_retrofit.synth.generator import SyntheticDataGenerator

    output_dir = Path(output_dir)
    library, templates = select_templates(config)
    c = config.corpus
    with keyed("corpus"):
        corpus = load_corpus(
            c.path, c.text_column, c.title_column, c.language_column, c.id_column, c.split, c.config_name,
            c.languages, c.max_documents, c.parallel_column,
        )  # fmt: skip
    ids = corpus["id"]
    held_out = [is_held_out(doc_id, config.eval_fraction) for doc_id in ids]
    if config.eval_fraction > 0 and not any(held_out) and len(ids) > 1:
        # A small corpus can draw no document below the fraction; hold out the one with the lowest hash instead.
        first = min(range(len(ids)), key=lambda i: hashlib.sha256(ids[i].encode()).digest()[:8][::-1])
        held_out[first] = True
        logger.warning("eval_fraction %s held out no document of %d; holding out one", config.eval_fraction, len(ids))
    parts = {
        "train": corpus.select([i for i, h in enumerate(held_out) if not h]),
        "eval": corpus.select([i for i, h in enumerate(held_out) if h]),
    }
    share = config.eval_fraction / (1 - config.eval_fraction)
    backend = config.backend.build() if any(t.kind_entry.needs_llm for t in templates) else None
    cache = ResponseCache(Path(config.cache_dir) if config.cache_dir else cache_dir() / "synth")
    splits, reports = {}, {}
    try:
        for name, documents in parts.items():
            if not len(documents):
                logger.warning("The %s split has no documents (eval_fraction %s)", name, config.eval_fraction)
            scale = 1.0 if name == "train" else share
            generator = SyntheticDataGenerator(
                backend,
                templates,
                library,
                config.validation,
                seed=seed,
                cache=cache,
                pairs_per_document=config.pairs_per_document,
                target_languages=config.target_languages,
                max_per_language=_scaled(config.max_per_language, scale),
                max_per_task=_scaled(config.max_per_task, scale),
                brainstorm=config.brainstorm,
                chunk_size=config.chunk_size,
                few_shot=config.few_shot,
            )
            splits[name], report = generator.generate(documents)
            reports[name] = report.to_dict()
    finally:
        cache.close()
        if backend is not None:
            backend.close()
    if not len(splits["train"]):
        raise ConfigError("templates", f"no pair passed validation; see the rejections: {reports['train']}")
    path = PAIRS.inside(output_dir)
    save_dataset(DatasetDict(splits), path)
    unlabeled = unlabeled_rows(parts["train"])
    save_dataset(unlabeled, UNLABELED.inside(output_dir))
    summary = {"templates": [t.name for t in templates], "backend": backend.identity() if backend else None,
               "unlabeled": len(unlabeled)}  # fmt: skip
    (output_dir / "report.json").write_text(
        json.dumps(summary | {"splits": reports}, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return path


def unlabeled_rows(documents: Dataset) -> Dataset:
    """Every training-side corpus document as an unlabeled row: its opening sentence as ``query`` (a short text of
    the kind users search with) and the passage as ``document``, with ``id`` and ``language``. Nothing says the two
    belong together for a loss; a teacher encodes both (``mining.unlabeled_per_language``) and
    ``train.corpus_distillation`` distils its embeddings of them, so every document teaches, not only those the
    templates made pairs of. Documents held out (``eval_fraction``) are never among them."""
    from datasets import Dataset

    from st_retrofit.synth.backends.heuristic import sentence_spans

    rows: dict[str, list[str]] = {"query": [], "document": [], "id": [], "language": []}
    for text, doc_id, language in zip(documents["text"], documents["id"], documents["language"], strict=True):
        spans = sentence_spans(text)
        if not spans:
            continue
        start, end = spans[0]
        for column, value in zip(rows, (text[start:end], text, doc_id, language), strict=True):
            rows[column].append(value)
    return Dataset.from_dict(rows)


def _scaled(cap: int | None, scale: float) -> int | None:
    return None if cap is None else max(1, math.ceil(cap * scale))


def synthesize_demo(config: SynthConfig, seed: int, output_dir: str | Path) -> Path:
    """``source: demo``: render the embedded demo facts as the ``train`` and ``eval`` splits."""
    data = build_demo_dataset(
        languages=config.languages,
        train_entities=config.train_entities,
        eval_entities=config.eval_entities,
        queries_per_document=config.queries_per_document,
        seed=seed,
    )
    path = PAIRS.inside(output_dir)
    data.save_to_disk(str(path))
    logger.info(
        "Synthesized %d train and %d held-out pairs in %d languages",
        len(data["train"]),
        len(data["eval"]),
        len(config.languages),
    )
    return path


def synthesize(config: SynthConfig, seed: int, output_dir: str | Path) -> Path:
    """Render the pairs that ``config`` describes and save them as a ``DatasetDict`` under ``output_dir/dataset``.

    The runner is the one :data:`st_retrofit.synth.config.SOURCES` registers for ``config.source``.

    Returns:
        The dataset folder (splits ``train`` and ``eval``).
    """
    return config.source_entry.run(config, seed, output_dir)
