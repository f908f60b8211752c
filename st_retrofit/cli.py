"""``st-retrofit``: run a recipe, or one stage of it, from the command line.

    st-retrofit run recipes/quickstart.yaml [--stages synth,mine] [--set mining.num_negatives=5] [--force]
    st-retrofit synth|mine|train|eval|publish recipes/quickstart.yaml [--set key.path=value ...]
    st-retrofit publish runs/quickstart --repo my-org/retrofit-e5-small [--private] [--dry-run]
    st-retrofit validate recipes/quickstart.yaml
    st-retrofit ablate recipes/ablations/hard-negatives.yaml [--set ...] [--dry-run]
    st-retrofit export runs/quickstart exported/ [--int8] [--openvino]
    st-retrofit templates [--dir my_templates/]
    st-retrofit schema > recipe.schema.json
    st-retrofit benchmark build manpages data/manpages [--debs DIR]

Every command is a thin call into the Python API (:func:`st_retrofit.load_recipe`, :func:`st_retrofit.run_pipeline`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from st_retrofit.config import ConfigError, StRetrofitError, did_you_mean
from st_retrofit.distributed import is_main_process
from st_retrofit.pipeline import STAGES, interrupted_stage, run_pipeline, run_stage, write_manifest
from st_retrofit.recipe import load_recipe
from st_retrofit.runfolder import EVAL_TABLE, locked

STAGE_HELP = {
    "synth": "generate the training and held-out pairs (demo data, or a corpus with templates and a backend)",
    "mine": "mine hard negatives with the teacher model",
    "train": "train (LoRA or full) and save the merged model",
    "eval": "evaluate base and retrofitted model on the held-out split",
    "publish": "write the release folder and push it unless publish.dry_run",
}


RECIPE_HELP = (
    "path to a YAML recipe (its input paths are relative to its own folder; output_dir and --set paths to the "
    "folder you run in)"
)


def _add_recipe_arguments(parser: argparse.ArgumentParser, recipe_help: str = RECIPE_HELP) -> None:
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.args.num_train_epochs=2 (repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    # -v works before or after the command: every subcommand takes it too (SUPPRESS keeps an earlier -v). The
    # parsers share the action object, so no set_defaults for it: that would reset an earlier -v in the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser = argparse.ArgumentParser(
        prog="st-retrofit", description="Retrofit small multilingual embedding models.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(commands.add_parser, parents=[common])

    # Each command names its handler (argparse's set_defaults): _main calls it, no chain of name comparisons.
    run = add_command("run", help="run the whole pipeline (or --stages) of a recipe")
    run.set_defaults(handler=_run_recipe)
    _add_recipe_arguments(run)
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    run.add_argument("--force", action="store_true", help="re-run stages even when they are up to date")

    for name, help_text in STAGE_HELP.items():
        stage = add_command(name, help=help_text)
        stage.set_defaults(handler=_run_recipe)
        if name == "publish":
            _add_recipe_arguments(stage, "a run folder (runs/NAME; its recipe.yaml is used) or a recipe")
        else:
            _add_recipe_arguments(stage)
        stage.add_argument("--force", action="store_true", help="re-run even when up to date")
        if name == "publish":
            stage.add_argument("--repo", help="the Hub repository, ORG/NAME (sets publish.repo_id)")
            stage.add_argument("--private", action="store_true", default=None, help="create the repository private")
            stage.add_argument("--dry-run", action="store_true", default=None, help="only write the release folder")
            stage.add_argument(
                "--mteb-submission", metavar="DIR",
                help="also write the MTEB leaderboard submission (ModelMeta, results, .eval_results) into DIR",
            )  # fmt: skip

    validate = add_command("validate", help="check a recipe and print it resolved, touching nothing")
    validate.set_defaults(handler=_validate)
    _add_recipe_arguments(validate)

    ablate = add_command("ablate", help="run a grid of recipe variants and plot a metric across it")
    ablate.set_defaults(handler=lambda args: _ablate(args.ablation, args.overrides, args.dry_run, args.only))
    ablate.add_argument("ablation", help="path to an ablation YAML (recipes/ablations/)")
    ablate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value in every variant (repeatable)",
    )  # fmt: skip
    ablate.add_argument("--dry-run", action="store_true", help="validate and list the variants, run nothing")
    ablate.add_argument(
        "--only", nargs="+", metavar="VARIANT", default=None,
        help="run these variants only (folder names or labels, as --dry-run lists them); the table covers them",
    )  # fmt: skip

    evaluate = add_command("evaluate", help="score models on mteb tasks without a recipe, side by side")
    evaluate.set_defaults(handler=_evaluate)
    evaluate.add_argument("models", nargs="+", help="run folders, model folders, Hub ids or offline: names")
    evaluate.add_argument(
        "--tasks", nargs="+", required=True,
        help="mteb tasks or benchmarks, BEIR folders, or folders of them (data/manpages/test)",
    )  # fmt: skip
    evaluate.add_argument("-o", "--output", default="runs/evaluate", help="results folder (default runs/evaluate)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default 32)")
    evaluate.add_argument("--max-seq-length", type=int, help="tokens per text (default: each model's own)")
    evaluate.add_argument(
        "--dimensions", type=int, nargs="+", default=[], help="also score embeddings cut to these sizes (truncate_dim)"
    )
    evaluate.add_argument(
        "--backends", nargs="+", default=[],
        help="also score each model on these encoder backends (onnx, onnx-int8: what int8 costs)",
    )  # fmt: skip

    merge = add_command("merge", help="merge models fine-tuned from one base (soup, slerp, task arithmetic, TIES)")
    merge.set_defaults(handler=_merge)
    merge.add_argument("models", nargs="+", help="run folders, model folders, Hub ids or offline: names")
    merge.add_argument("-o", "--output", required=True, help="the new model folder (must not exist)")
    merge.add_argument(
        "--method", default="soup",
        help="soup (weighted average, the default), slerp (two models), task_arithmetic, ties, dare_ties, or "
        "mergekit:<method> (any of mergekit's, through SentenceTransformer.merge; mergekit installed)",
    )  # fmt: skip
    merge.add_argument(
        "--parameters", type=json.loads, default=None, metavar="JSON",
        help='mergekit:<method> only: its parameters as JSON, e.g. \'{"lambda": 1.0}\'',
    )  # fmt: skip
    merge.add_argument("--weights", type=float, nargs="+", help="one per model (soup: normalized; default uniform)")
    merge.add_argument("--base", help="the common base model (task_arithmetic, ties, dare_ties)")
    merge.add_argument("--t", type=float, default=0.5, help="slerp: 0 = the first model, 1 = the second")
    merge.add_argument("--density", type=float, default=0.5, help="ties / dare_ties: share of each task vector kept")

    export = add_command("export", help="export a model to ONNX (and int8) for onnxruntime, without optimum")
    export.set_defaults(handler=_export)
    export.add_argument("model", help="a run folder, model folder, Hub id or offline: name")
    export.add_argument("output", help="the new folder (must not exist): the model, onnx/model.onnx, agreement.json")
    export.add_argument("--int8", action="store_true", help="also onnx/model_qint8.onnx (dynamic int8, per channel)")
    export.add_argument(
        "--openvino", action="store_true",
        help="also openvino/openvino_model.xml (and, with --int8, openvino_model_int8_weights.xml: int8 weights)",
    )  # fmt: skip

    templates = add_command("templates", help="list the synthesis templates (shipped and --dir)")
    templates.set_defaults(handler=lambda args: _list_templates(args.dirs))
    templates.add_argument("--dir", dest="dirs", action="append", default=[], help="a folder of YAML templates")

    schema = add_command("schema", help="print the JSON Schema of a recipe (for editors: yaml-language-server)")
    schema.set_defaults(handler=_schema)
    of = schema.add_mutually_exclusive_group()
    of.add_argument("--ablation", action="store_true", help="the schema of an ablation file instead")
    of.add_argument("--templates", action="store_true", help="the schema of a synthesis template file instead")

    benchmark = add_command("benchmark", help="build a real-text retrieval benchmark")
    benchmark.set_defaults(handler=_benchmark)
    build = benchmark.add_subparsers(dest="benchmark_command", required=True).add_parser(
        "build", parents=[common], help="build a benchmark's corpus, dev and test parts into a folder"
    )
    build.add_argument("dataset", choices=["manpages"], help="manpages: Debian's manual pages in 13 languages")
    build.add_argument("output", help="the folder to write (corpus.jsonl, dev/, test/, licenses/, summary.json)")
    build.add_argument("--debs", help="a folder of .deb files to use instead of apt-get download")
    build.add_argument("--seed", type=int, default=0, help="seeds the split of page names (default 0)")
    build.add_argument("--dev", type=float, default=0.1, help="share of page names in dev (default 0.1)")
    build.add_argument("--test", type=float, default=0.2, help="share of page names in test (default 0.2)")
    build.add_argument("--max-words", type=int, default=300, help="words of each description kept (default 300)")
    return parser


def _list_templates(dirs: list[str]) -> int:
    from st_retrofit.synth import TemplateLibrary, TemplateLibraryError

    try:
        library = TemplateLibrary(dirs)
    except TemplateLibraryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = sorted(library, key=lambda t: (t.kind, t.task_type, t.name))
    width = max(len(t.name) for t in rows)
    print(f"{'name':<{width}}  {'kind':<10}  {'task type':<16}  description")
    for t in rows:
        print(f"{t.name:<{width}}  {t.kind:<10}  {t.task_type:<16}  {t.description}")
    return 0


def _ablate(path: str, overrides: list[str], dry_run: bool, only: list[str] | None = None) -> int:
    from st_retrofit.ablate import load_ablation, run_ablation, variant_recipes

    ablation = load_ablation(path)
    if dry_run:
        for name, series, x, recipe in variant_recipes(ablation, overrides):
            changes = {**(series.overrides if series else {}), **x.overrides}
            print(f"{name:<40} {recipe.run_dir}  {changes}")
        print(f"{len(ablation.variants())} variants OK")
        return 0
    folder = run_ablation(ablation, overrides, only=only)
    print((folder / "results.md").read_text())
    print(f"ablation: {folder} (results.json, {ablation.metric}.png)")
    return 0


def _publish_arguments(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``publish RUN_DIR``: the run's own recipe.yaml, pointed at that folder; --repo/--private/--dry-run become
    overrides. Pushing is explicit: with --repo and without --dry-run, publish.dry_run turns false."""
    recipe, overrides = args.recipe, list(args.overrides)
    folder = Path(recipe)
    if folder.is_dir():
        if not (folder / "recipe.yaml").is_file():
            raise ConfigError(
                "recipe", f"{folder} is not a run folder (no recipe.yaml); pass a recipe or a run folder"
            )
        overrides = [
            f"output_dir={json.dumps(str(folder.resolve().parent))}",
            f"name={folder.resolve().name}",
            *overrides,
        ]
        recipe = str(folder / "recipe.yaml")
    if args.repo:
        overrides.append(f"publish.repo_id={args.repo}")
        if args.dry_run is None:
            overrides.append("publish.dry_run=false")
    if args.dry_run:
        overrides.append("publish.dry_run=true")
    if args.private:
        overrides.append("publish.private=true")
    return recipe, overrides


def _stages(text: str | None) -> list[str] | None:
    """``--stages synth,mine``, each name checked against the pipeline's stages."""
    if not text:
        return None
    stages = [s.strip() for s in text.split(",")]
    for stage in stages:
        if stage not in STAGES:
            raise ConfigError("--stages", f"unknown stage {stage!r}{did_you_mean(stage, STAGES, 'stages')}")
    return stages


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("st_retrofit").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # One bar per filter/save/flatten call drowns the stage logs; training and encoding keep theirs. Set through
        # the environment so that commands which never read data do not import datasets.
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        else:
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not sys.stderr.isatty():
        # In a log file a progress bar is a run of carriage returns; there, the stage logs and the trainer's loss
        # lines (tqdm.write) say the same. tqdm reads its defaults from TQDM_* variables.
        os.environ.setdefault("TQDM_DISABLE", "1")


# What a user can fix (every st-retrofit error derives from StRetrofitError, and the OS's): one line on stderr and
# exit 2 (with -v, the traceback too). Anything else is a bug and keeps its traceback.
USER_ERRORS = (StRetrofitError, OSError)


def _user_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, ConfigError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or exc}"
    return " ".join(str(exc).split())


# A full disk (or a file-size limit) reaches us as an OSError, or wrapped by torch, safetensors or arrow in their own
# error types with the OS's words in the message.
DISK_FULL = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EFBIG: "File too large",
}


def _disk_full(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for an error that a full disk caused anywhere in its chain, naming the path and its free space;
    ``None`` for any other error."""
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        words = DISK_FULL.get(getattr(current, "errno", None)) if isinstance(current, OSError) else None
        words = words or next((w for w in DISK_FULL.values() if w in str(current)), None)
        if words:
            path = getattr(current, "filename", None) or _run_folder(args) or Path.cwd()
            free = _free_bytes(Path(path))
            space = f" ({free / 2**20:,.0f} MiB free there)" if free is not None else ""
            return (
                f"{words} writing {path}{space}; free some space and rerun the same command: finished stages are "
                "kept and an interrupted one resumes"
            )
        current = current.__cause__ or current.__context__
    return None


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None


def _run_folder(args: argparse.Namespace) -> Path | None:
    try:
        return load_recipe(args.recipe, args.overrides, check=False).run_dir
    except (AttributeError, ConfigError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    _setup_logging(args.verbose)
    try:
        return _main(args)
    except KeyboardInterrupt:
        where = _resume_point(args)
        print(f"error: interrupted; rerun the same command to resume{where}", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _disk_full(exc, args) or (_user_error(exc) if isinstance(exc, USER_ERRORS) else None)
        if message is None or args.verbose:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _resume_point(args: argparse.Namespace) -> str:
    """`` from <stage> (step N)`` for the stage an interrupt left behind, when the run folder tells."""
    run_dir = _run_folder(args)
    if run_dir is None:
        return ""
    point = interrupted_stage(run_dir)
    return f" from {point}" if point else ""


def _main(args: argparse.Namespace) -> int:
    return args.handler(args)


def _schema(args: argparse.Namespace) -> int:
    if args.ablation:
        from st_retrofit.ablate import ablation_schema as schema
    elif args.templates:
        from st_retrofit.synth.templates import template_file_schema as schema
    else:
        from st_retrofit.recipe import recipe_schema as schema

    print(json.dumps(schema(), indent=2))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from st_retrofit.offline import manpages

    summary = manpages.build(
        args.output, debs=args.debs, seed=args.seed, dev_fraction=args.dev, test_fraction=args.test,
        max_words=args.max_words,
    )  # fmt: skip
    print(json.dumps({key: summary[key] for key in ("pages", "corpus_documents", "tasks")}, indent=2))
    print(f"benchmark: {args.output} (corpus.jsonl, dev/, test/, licenses/, summary.json)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from st_retrofit.evaluation.models import evaluate_models

    evaluate_models(
        args.models, args.tasks, args.output, args.batch_size, args.max_seq_length, args.dimensions, args.backends
    )
    print((Path(args.output) / "mteb_comparison.md").read_text())
    print(f"results: {args.output} (mteb_comparison.json, mteb/results/)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from st_retrofit.export import export_model_folder

    report = export_model_folder(args.model, args.output, int8=args.int8, openvino=args.openvino)
    for file, agreement in report["agreement"].items():
        print(f"{file}: cosine to the torch model, mean {agreement['mean']:.4f}, min {agreement['min']:.4f}")
    print(f"exported: {args.output}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from st_retrofit.merge.folders import merge_folders

    folder = merge_folders(
        args.models, args.output, args.method, args.weights, args.base, args.t, args.density,
        parameters=args.parameters,
    )  # fmt: skip
    print(f"merged {len(args.models)} models ({args.method}) into {folder} (merge.json lists the ingredients)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(json.dumps(recipe.to_dict(), indent=2))
    print(f"recipe OK; run folder: {recipe.run_dir}")
    return 0


def _run_recipe(args: argparse.Namespace) -> int:
    """``run`` and each stage command (``synth`` ... ``publish``)."""
    if args.command == "publish":
        args.recipe, args.overrides = _publish_arguments(args)
    stages = _stages(args.stages) if args.command == "run" else None  # a typo is named before any check runs
    # The run folder's lock before the recipe's checks (they load models and tasks: a minute for a large teacher),
    # so that a second run of a busy folder stops at once.
    run_dir = load_recipe(args.recipe, args.overrides, check=False).run_dir
    with locked(run_dir) if is_main_process() else contextlib.nullcontext():
        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "run":
            outputs = run_pipeline(recipe, stages=stages, force=args.force)
        else:
            outputs = {args.command: run_stage(recipe, args.command, force=args.force)}
            if is_main_process():
                write_manifest(recipe)
    if not is_main_process():
        return 0
    if getattr(args, "mteb_submission", None):
        from st_retrofit.publish.mteb_submission import write_mteb_submission

        folder = write_mteb_submission(recipe, outputs["publish"], args.mteb_submission)
        print(f"MTEB submission: {folder} (README.md says where each part goes)")

    table = EVAL_TABLE.at(recipe.run_dir)
    if "eval" in outputs and table.is_file():
        print(f"\nHeld-out retrieval (k={recipe.eval.k}):\n")
        print(table.read_text())
    for name, path in outputs.items():
        print(f"{name:>8}: {Path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
