"""Real text: st-retrofit against its base model, its teacher and plain sentence-transformers, on Debian's manual pages.

One run, one table of nDCG@10 on the benchmark's **test** tasks (one per language, one per language into English),
every system trained on the same generated pairs:

- ``base``: multilingual-e5-small as it is;
- ``teacher``: EmbeddingGemma-300m as it is, at the student's 128 tokens and in the precision it mined with: the
  ceiling of what it can teach;
- ``plain ST, scale 20`` and ``plain ST, scale 100``: what a user would write with sentence-transformers:
  ``MultipleNegativesRankingLoss`` with in-batch negatives, full fine-tuning, lr 2e-5, one epoch, batch 32, the
  model's own ``query: `` / ``passage: `` prompts; at MNRL's default scale and at e5's temperature (and, when the
  teacher recipe trains on another schedule, learning rate or epochs, scale 100 and the row below on that one too);
- ``plain ST + teacher negatives``: the same at scale 100 with the teacher's hardest negative per row (the
  positive-aware 5% margin, top candidate: what ``mine_hard_negatives`` with the same teacher returns), so that a
  gain of ours over it comes from our parts, not only from the teacher's negatives;
- ``plain ST, every document's pairs``: plain MNRL at scale 100 on the teacher recipe's schedule, on the pairs the
  same templates make from every training-side corpus document (no per-language cap: 3-4x the pairs): a plain run
  that has read the whole corpus, as the teacher recipe's corpus-wide parts do (``mining.corpus_candidates``,
  ``train.corpus_distillation``);
- ``st-retrofit, self-teacher``: ``recipes/manpages.yaml`` (the student mines for itself and is distilled from
  itself);
- ``st-retrofit, teacher``: ``recipes/manpages-teacher.yaml`` (EmbeddingGemma-300m mines and is distilled);
- ``st-retrofit, teacher, every document's pairs``: the same recipe on the every-document pairs, compared (with its
  own paired intervals) with plain MNRL on those pairs, without and with its teacher's hardest negative.

    st-retrofit benchmark build manpages data/manpages     # once
    python benchmarks/real_text.py [--data data/manpages]

Trained baselines are reused when their pairs and settings are the same (``baseline.json``), and so are the test
scores of an unchanged model (``scores.json`` beside it; the report lists them under ``scores_reused``): a rerun
with a new teacher recipe trains and scores only that recipe. Systems run in the order that decides the goals
first (base, the teacher recipe, plain MNRL on the teacher recipe's schedule, then the rest), and the report is
written after each one (``not_yet_scored`` lists what is left), so a run cut short keeps what it measured and a
rerun goes on from there.

Goals (issue "A teacher stronger than the student"): the teacher recipe >= base + 9.0 and >= the best plain variant
+ 2.0 on the test mean, no task below base, its monolingual mean above every plain variant. The table, the share of
the teacher-student gap closed and ``benchmarks/results/real_text.json`` say which are met. Every system is scored
by the same function, which keeps each query's ranking, so the teacher recipe's difference to each plain variant
comes with its 95% paired-bootstrap interval over the test queries (:mod:`st_retrofit.evaluation.significance`):
tasks of 21-297 queries move by points when one query does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAIN_SCALES = (20.0, 100.0)
# Full fine-tuning's usual schedule; when the teacher recipe trains on another, plain MNRL gets that one too.
PLAIN_SCHEDULE = {"learning_rate": 2e-5, "num_train_epochs": 1}
SELF, TEACHER, BASE, CEILING = "st-retrofit, self-teacher", "st-retrofit, teacher", "base", "teacher"
TEACHER_NEGATIVES = "plain ST + teacher negatives"
EVERY_DOCUMENT = "plain ST, every document's pairs"
TEACHER_EVERY_DOCUMENT = "st-retrofit, teacher, every document's pairs"
TEACHER_NEGATIVES_EVERY_DOCUMENT = "plain ST + teacher negatives, every document's pairs"


def pairs_digest(recipe) -> str:
    """A hash of the recipe's synthesized train pairs, row by row: the systems must share them exactly."""
    from datasets import load_from_disk

    from st_retrofit.runfolder import PAIRS

    pairs = load_from_disk(str(PAIRS.at(recipe.run_dir)))["train"]
    digest = hashlib.blake2b(digest_size=16)
    for query, document in zip(pairs["query"], pairs["document"], strict=True):
        digest.update(f"{query}\0{document}\0".encode())
    return digest.hexdigest()


def train_plain(
    recipe, scale: float, output: Path, negatives_from: Path | None = None, schedule: dict | None = None
) -> Path:
    """Plain sentence-transformers on the recipe's own synthesized train pairs (query, document), or, with
    ``negatives_from`` (a mine stage's output), on (query, document, the best mined negative) triplets."""
    from datasets import concatenate_datasets, load_from_disk
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from st_retrofit.mining.miner import pool_to_ntuple
    from st_retrofit.models.resolve import load_model, role_prompt
    from st_retrofit.runfolder import MINED, PAIRS, read_state

    schedule = {**PLAIN_SCHEDULE, **(schedule or {})}
    # A finished baseline is reused only when it was trained on these very pairs with these settings.
    key = {"pairs": pairs_digest(recipe), "base": recipe.model.base, "scale": scale, "seed": recipe.seed,
           "max_seq_length": recipe.model.max_seq_length, "schedule": schedule,
           "negatives": read_state(negatives_from)["fingerprint"]
           if negatives_from else None}  # fmt: skip
    stamp = output / "baseline.json"
    if (output / "model.safetensors").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return output
    if negatives_from is None:
        data = load_from_disk(str(PAIRS.at(recipe.run_dir)))["train"].select_columns(["query", "document"])
    else:
        # One table in input order (the miner's splits are its language groups), shuffled by the trainer.
        mined = load_from_disk(str(MINED.inside(negatives_from)))
        data = concatenate_datasets([pool_to_ntuple(split, 1) for split in mined.values()]).remove_columns("label")
    model = load_model(recipe.model.base)
    model.max_seq_length = recipe.model.max_seq_length
    prompts = {"query": role_prompt(model, "query"), "document": role_prompt(model, "document")}
    if negatives_from is not None:
        prompts["negative_1"] = prompts["document"]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"),
        per_device_train_batch_size=32,
        **schedule,
        warmup_steps=0.1,
        seed=recipe.seed,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
        prompts=prompts,
    )
    loss = MultipleNegativesRankingLoss(model, scale=scale)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    model.save_pretrained(str(output))
    stamp.write_text(json.dumps(key))
    return output


REUSED: list[str] = []  # the systems whose scores a rerun read back (reported)
PREDICTIONS: dict[str, Path] = {}  # each system's saved rankings, for the paired bootstrap


def scored(label: str, folder: Path, key: dict, load, tasks: list) -> dict[str, float]:
    """The test scores of the model ``load()`` returns, with its rankings saved in ``folder/predictions``; read back
    instead when ``folder`` holds both for the same ``key`` (the model and the tasks), so a rerun after one recipe
    changed scores only that recipe again."""
    from st_retrofit.evaluation.mteb import run_mteb

    stamp, predictions = folder / "scores.json", folder / "predictions"
    PREDICTIONS[label] = predictions
    if stamp.is_file() and predictions.is_dir() and json.loads(stamp.read_text())["key"] == key:
        REUSED.append(label)
        return json.loads(stamp.read_text())["scores"]
    folder.mkdir(parents=True, exist_ok=True)
    slug = label.replace(" ", "-").replace(",", "")
    scores = run_mteb(load(), slug, tasks, folder / "mteb", 32, prediction_folder=predictions)
    stamp.write_text(json.dumps({"key": key, "scores": scores}, indent=2))
    return scores


def trained_model(recipe) -> Path:
    """Run the recipe up to its trained model (stages already done are skipped)."""
    from st_retrofit.pipeline import run_pipeline
    from st_retrofit.runfolder import TRAINED_MODEL

    run_pipeline(recipe, stages=["synth", "mine", "train"])
    return TRAINED_MODEL.at(recipe.run_dir)


def folder_loader(folder: Path, max_seq_length: int | None):
    def load():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu")
        model.max_seq_length = max_seq_length
        return model

    return load


def model_key(folder: Path, tasks: list[str]) -> dict:
    return {"folder": str(folder.resolve()), "weights": (folder / "model.safetensors").stat().st_mtime_ns,
            "tasks": tasks}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "manpages.yaml"), help="the self-teacher recipe")
    parser.add_argument(
        "--teacher-recipe",
        default=str(REPO / "recipes" / "manpages-teacher.yaml"),
        help="the teacher recipe, or a finished ablation variant's runs/<ablation>/<variant>/recipe.yaml (its "
        "trained model is reused and scored on the test tasks)",
    )
    parser.add_argument("--data", default=str(REPO / "data" / "manpages"), help="the built benchmark")
    parser.add_argument(
        "--extra", nargs="+", default=[], metavar="LABEL=FOLDER",
        help="more st-retrofit models to score as columns (a soup chosen on dev, say); the goals stay the teacher "
        "recipe's",
    )  # fmt: skip
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "real_text.json"))
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("st_retrofit").setLevel(logging.INFO)

    from st_retrofit.evaluation.mteb import resolve_tasks
    from st_retrofit.models import load_model
    from st_retrofit.pipeline import run_pipeline, stage_state
    from st_retrofit.recipe import load_recipe

    started = time.time()
    recipe, teacher_recipe = load_recipe(args.recipe), load_recipe(args.teacher_recipe)
    run_pipeline(recipe, stages=["synth"])
    if pairs_digest(recipe) != pairs_digest(teacher_recipe):
        raise SystemExit("the two recipes synthesized different pairs; their synth sections must be the same")
    tasks = resolve_tasks([str(Path(args.data) / "test")])
    task_names = sorted(task.metadata.name for task in tasks)
    length = recipe.model.max_seq_length
    baselines = recipe.run_dir / "baselines"
    mining = teacher_recipe.mining

    def load_base():
        model = load_model(recipe.model.base, device="cpu")
        model.max_seq_length = length
        return model

    def load_teacher():
        from st_retrofit.export.backends import ENCODER_BACKENDS

        teacher = load_model(mining.teacher, device="cpu")
        teacher.max_seq_length = mining.max_seq_length
        return ENCODER_BACKENDS[mining.backend].prepare(teacher, mining.teacher_dtype)  # scored as it mined

    def recipe_system(run_recipe):
        def score(label: str) -> dict[str, float]:
            model = trained_model(run_recipe)
            return scored(label, model.parent.parent / "benchmark", model_key(model, task_names),
                          folder_loader(model, length), tasks)  # fmt: skip

        return score

    def plain_system(scale, folder, negatives_from, schedule, pairs_from):
        def score(label: str) -> dict[str, float]:
            trained = train_plain(pairs_from, scale, folder, negatives_from, schedule)
            key = {"model": json.loads((trained / "baseline.json").read_text()), "tasks": task_names}
            return scored(label, trained, key, folder_loader(trained, length), tasks)

        return score

    def fixed_system(folder, key, load):
        return lambda label: scored(label, folder, key, load, tasks)

    # label -> how to train (when not done) and score it; run in this order, which puts the comparisons that decide
    # the goals first, so that a run cut short has them, and a rerun picks up where it stopped.
    systems = {
        BASE: fixed_system(baselines / "base", {"model": recipe.model.base, "max_seq_length": length,
                                                "tasks": task_names}, load_base),
        TEACHER: recipe_system(teacher_recipe),
    }  # fmt: skip
    # A tuned baseline: plain MNRL (with and without the teacher's negatives) on the teacher recipe's schedule (rate,
    # epochs), so that a gain of ours is not the schedule's; and on the usual one, as a user would write it.
    # Keyed by the mined data, not the variant: teacher recipes that mine alike share the negatives baseline.
    run_pipeline(teacher_recipe, stages=["synth", "mine"])
    mined, fingerprint = teacher_recipe.run_dir / "mine", stage_state(teacher_recipe.run_dir, "mine")["fingerprint"]
    negatives = baselines / f"mnrl-scale-100-teacher-negatives-{fingerprint[:8]}"
    schedule = {key: teacher_recipe.train.args.get(key, value) for key, value in PLAIN_SCHEDULE.items()}
    usual = {
        f"plain ST, scale {s:g}": (s, baselines / f"mnrl-scale-{s:g}", None) for s in PLAIN_SCALES
    } | {TEACHER_NEGATIVES: (100.0, negatives, mined)}  # fmt: skip
    if schedule != PLAIN_SCHEDULE:
        named = ", ".join(f"{'lr' if k == 'learning_rate' else 'epochs'} {v:g}" for k, v in schedule.items())
        slug = "-".join(f"{k}-{v:g}" for k, v in schedule.items())
        for label in (f"plain ST, scale {PLAIN_SCALES[-1]:g}", TEACHER_NEGATIVES):
            scale, folder, negatives_from = usual[label]
            systems[f"{label}, {named}"] = plain_system(
                scale, folder.with_name(f"{folder.name}-{slug}"), negatives_from, schedule, recipe
            )
    # The same corpus, all of it: plain MNRL on the pairs of every training-side document (no per-language cap), at
    # scale 100 on the teacher recipe's schedule, for the recipe's corpus-wide parts (mining.corpus_candidates,
    # train.corpus_distillation) to be measured against a plain run that has read the whole corpus too.
    every_document = load_recipe(
        args.teacher_recipe, ["synth.max_per_language=null", f"name={teacher_recipe.name}-every-document"]
    )

    def score_every_document(label: str) -> dict[str, float]:
        run_pipeline(every_document, stages=["synth"])
        folder = baselines / "mnrl-scale-100-every-document"
        return plain_system(100.0, folder, None, schedule, every_document)(label)

    systems[EVERY_DOCUMENT] = score_every_document
    # ... and the teacher recipe on those same pairs: whether its parts add to more data, not only replace it; with
    # plain MNRL given its teacher's negatives there too.
    systems[TEACHER_EVERY_DOCUMENT] = recipe_system(every_document)

    def score_every_document_negatives(label: str) -> dict[str, float]:
        run_pipeline(every_document, stages=["synth", "mine"])
        mined_print = stage_state(every_document.run_dir, "mine")["fingerprint"][:8]
        folder = baselines / f"mnrl-scale-100-every-document-teacher-negatives-{mined_print}"
        return plain_system(100.0, folder, every_document.run_dir / "mine", schedule, every_document)(label)

    systems[TEACHER_NEGATIVES_EVERY_DOCUMENT] = score_every_document_negatives
    ceiling_key = {"teacher": mining.teacher, "dtype": mining.teacher_dtype, "backend": mining.backend,
                   "max_seq_length": mining.max_seq_length, "tasks": task_names}  # fmt: skip
    systems[CEILING] = fixed_system(baselines / "teacher", ceiling_key, load_teacher)
    systems[SELF] = recipe_system(recipe)
    for label, (scale, folder, negatives_from) in usual.items():
        systems[label] = plain_system(scale, folder, negatives_from, PLAIN_SCHEDULE, recipe)
    for extra in args.extra:
        label, _, folder = extra.partition("=")
        folder = Path(folder)
        systems[label] = fixed_system(folder.parent / f"benchmark-{folder.name}", model_key(folder, task_names),
                                      folder_loader(folder, length))  # fmt: skip

    scores: dict[str, dict[str, float]] = {}
    for label, score in systems.items():
        logging.getLogger(__name__).warning("system %d of %d: %s", len(scores) + 1, len(systems), label)
        scores[label] = score(label)
        report = summarize(scores)
        report["significance"] = significance(tasks, [s for s in scores if s.startswith("plain") or s == BASE])
        report["goals"] += report["significance"]["lines"]
        report["pairs"] = pairs_digest(recipe)
        report["seconds"] = round(time.time() - started)
        report["scores_reused"] = REUSED  # same model, same tasks: scored by an earlier run
        report["not_yet_scored"] = [s for s in systems if s not in scores]
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))  # after each system: a cut-short run keeps it
    print(report["table"])
    for line in report["goals"]:
        print(line)
    print(f"\n{report['seconds']} s; results in {args.output}")


def significance(tasks: list, others: list[str]) -> dict:
    """The teacher recipe against each of ``others`` (and, once both are scored, its every-document run against plain
    MNRL on those pairs): the mean-over-tasks difference with its 95% paired-bootstrap interval over test queries
    (each task's queries resampled, the same draw for both systems); ``results[ours][other]``."""
    from st_retrofit.evaluation.significance import paired_bootstrap, per_query_scores

    pairings = [(TEACHER, other) for other in others]
    # On the same every-document pairs:
    pairings += [(TEACHER_EVERY_DOCUMENT, EVERY_DOCUMENT), (TEACHER_EVERY_DOCUMENT, TEACHER_NEGATIVES_EVERY_DOCUMENT)]
    names = {TEACHER: "teacher recipe", TEACHER_EVERY_DOCUMENT: "teacher recipe, every document's pairs"}
    results: dict[str, dict[str, dict]] = {}
    lines = []
    for ours, other in pairings:
        if ours not in PREDICTIONS or other not in PREDICTIONS:
            continue
        result = paired_bootstrap(
            per_query_scores(PREDICTIONS[ours], tasks), per_query_scores(PREDICTIONS[other], tasks)
        )
        results.setdefault(ours, {})[other] = result
        lines.append(
            f"{names[ours]} - {other}: {100 * result['difference']:+.2f} [{100 * result['low']:+.2f}, "
            f"{100 * result['high']:+.2f}] (95% over {result['queries']} test queries; ahead in "
            f"{100 * result['share_above']:.0f}% of samples)"
        )
    return {"results": results, "lines": lines}


def summarize(scores: dict[str, dict[str, float]]) -> dict:
    """The table (x100, per task, means over all, monolingual and into-English tasks) and the goals' verdicts."""
    from st_retrofit.tables import markdown_table

    systems = list(scores)
    tasks = sorted(set.intersection(*(set(s) for s in scores.values())))
    cross = [t for t in tasks if t.removesuffix("-test").endswith("-en") and t != "manpages-en-test"]
    mono = [t for t in tasks if t not in cross]

    def mean(system: str, subset: list[str]) -> float:
        return 100 * sum(scores[system][t] for t in subset) / len(subset) if subset else float("nan")

    rows = [[t.removesuffix("-test"), *(f"{100 * scores[s][t]:.1f}" for s in systems)] for t in tasks]
    for label, subset in (("mean", tasks), ("monolingual mean", mono), ("into-English mean", cross)):
        rows.append([f"**{label}** ({len(subset)})", *(f"**{mean(s, subset):.1f}**" for s in systems)])
    table = markdown_table(["task (nDCG@10 x100)", *systems], rows)
    return {"scores": scores, "tasks": tasks, "monolingual": mono, "into_english": cross, "table": table,
            "goals": goals(scores, tasks, mono)}  # fmt: skip


def goals(scores: dict[str, dict[str, float]], tasks: list[str], mono: list[str]) -> list[str]:
    """The issue's goals for the teacher recipe (and for its every-document run, once scored), each judged once the
    systems it compares have been scored."""
    if TEACHER not in scores or BASE not in scores:
        return ["goals: not judged before the base and the teacher recipe are scored"]
    names = {TEACHER: "teacher recipe", TEACHER_EVERY_DOCUMENT: "teacher recipe, every document's pairs"}
    return [line for ours in names if ours in scores for line in _goals_of(ours, names[ours], scores, tasks, mono)]


def _goals_of(ours: str, name: str, scores: dict, tasks: list[str], mono: list[str]) -> list[str]:
    def mean(system: str, subset: list[str]) -> float:
        return 100 * sum(scores[system][t] for t in subset) / len(subset)

    worst = min(tasks, key=lambda t: scores[ours][t] - scores[BASE][t])
    lines = [
        _goal(f"{name} >= base + 9.0 on the mean ({mean(ours, tasks):.1f} vs {mean(BASE, tasks):.1f})",
              mean(ours, tasks) >= mean(BASE, tasks) + 9.0),
        _goal(f"{name}: no task below base (worst: {worst.removesuffix('-test')} "
              f"{100 * (scores[ours][worst] - scores[BASE][worst]):+.1f})",
              scores[ours][worst] >= scores[BASE][worst]),
    ]  # fmt: skip
    plain = [s for s in scores if s.startswith("plain")]  # every plain variant, on either set of pairs
    if plain:
        best = max(plain, key=lambda s: mean(s, tasks))
        best_mono = max(plain, key=lambda s: mean(s, mono))
        lines += [
            _goal(f"{name} >= best plain ({best}) + 2.0 on the mean ({mean(ours, tasks):.1f} vs "
                  f"{mean(best, tasks):.1f})", mean(ours, tasks) >= mean(best, tasks) + 2.0),
            _goal(f"{name}: monolingual mean above every plain variant ({mean(ours, mono):.1f} vs "
                  f"{mean(best_mono, mono):.1f} for {best_mono})", mean(ours, mono) > mean(best_mono, mono)),
            f"tasks where the {name} beats the best plain variant: "
            f"{sum(scores[ours][t] > scores[best][t] for t in tasks)} of {len(tasks)}",
        ]  # fmt: skip
    if CEILING in scores:
        gap = mean(CEILING, tasks) - mean(BASE, tasks)
        closed = (mean(ours, tasks) - mean(BASE, tasks)) / gap if gap > 0 else float("nan")
        lines.append(f"{name}: teacher-student gap closed: {100 * closed:.0f}% ({mean(BASE, tasks):.1f} -> "
                     f"{mean(ours, tasks):.1f} of {mean(CEILING, tasks):.1f})")  # fmt: skip
    return lines


def _goal(text: str, met: bool) -> str:
    return f"{'met   ' if met else 'MISSED'}  {text}"


if __name__ == "__main__":
    main()
