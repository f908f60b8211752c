"""MTEB leaderboard submission: the model's ``ModelMeta`` and its results in the layouts mteb's repositories take.

The leaderboard reads two repositories: ``embeddings-benchmark/mteb`` holds each model's ``ModelMeta`` (a Python
file under ``mteb/models/model_implementations/``) and ``embeddings-benchmark/results`` holds the scores
(``results/<org>__<name>/<revision>/<Task>.json`` beside ``model_meta.json``). :func:`write_mteb_submission`
writes both from a release folder, ready to be copied over a checkout of each and sent as two pull requests, plus
the ``.eval_results/`` files the Hub shows on the model page (written into the release folder too, so a push
carries them).

Only tasks mteb knows by name go in: a local BEIR folder (the man-page tasks, a user's own documents) is no
leaderboard task, and the submission's README lists what was left out. The metadata comes from mteb itself
(:meth:`ModelMeta.from_sentence_transformer_model`); st-retrofit adds what only the recipe knows: the repository and
revision, languages, licence, declared training datasets, the base model and the prompts the scores were made with.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.extras import require_module
from st_retrofit.publish.errors import PublishError
from st_retrofit.runfolder import PUSHED

if TYPE_CHECKING:
    from st_retrofit.config import SectionView

logger = logging.getLogger(__name__)

TRAINING_CODE_URL = "https://github.com/st-retrofit/st-retrofit"
IMPLEMENTATIONS = Path("mteb") / "mteb" / "models" / "model_implementations"


def mteb_language(code: str) -> str:
    """mteb's ``<ISO 639-3>-<script>`` for a language code: ``de`` -> ``deu-Latn``, ``zh-Hant`` -> ``zho-Hant``."""
    import langcodes

    language = langcodes.Language.get(code)
    return f"{language.to_alpha3()}-{language.maximize().script}"


def leaderboard_results(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The task result files under ``folder`` (mteb's layout, any depth) split into tasks mteb knows by name
    (``{task: file}``, the newest file per task) and the names of the others (local tasks)."""
    mteb = require_module("mteb", "the MTEB submission")
    from st_retrofit.evaluation.mteb import result_files

    known: dict[str, Path] = {}
    local: list[str] = []
    for name, (path, _) in result_files(folder).items():
        try:
            mteb.get_task(name)
        except KeyError:
            local.append(name)
        else:
            known[name] = path
    return known, sorted(local)


def write_hub_eval_results(results: dict[str, Path], folder: Path, user: str | None = None) -> list[Path]:
    """One ``<Task>.yaml`` per result in ``folder`` (the Hub's ``.eval_results/``), in mteb's own format."""
    TaskResult = require_module("mteb", "the Hub's eval results").TaskResult

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, path in sorted(results.items()):
        # mteb writes these files only while uploading them (ModelMeta.push_eval_results); its converter is used
        # here without the upload, so that the release folder carries them and a push is one commit.
        benchmark_result = TaskResult.from_disk(path)._to_hf_benchmark_result(user)
        target = folder / f"{name}.yaml"
        target.write_text(benchmark_result.to_yaml(), encoding="utf-8")
        written.append(target)
    return written


def pushed_revision(run_dir: Path) -> str | None:
    """The commit the publish stage pushed (``pushed.json``), or None for a dry run."""
    pushed = PUSHED.at(run_dir)
    if not pushed.is_file():
        return None
    match = re.search(r"([0-9a-f]{40})", json.loads(pushed.read_text()).get("commit", ""))
    return match.group(1) if match else None


def model_meta(recipe: SectionView, release_dir: Path, revision: str | None) -> Any:
    """mteb's ``ModelMeta`` of the released model, with what the recipe knows filled in."""
    require_module("mteb", "the MTEB submission")
    from mteb.models.model_meta import ModelMeta
    from sentence_transformers import SentenceTransformer

    from st_retrofit.evaluation.mteb import mteb_prompts
    from st_retrofit.models import base_model_id

    model = SentenceTransformer(str(release_dir), device="cpu")
    repo_id = recipe.publish.repo_id
    dimension = model.get_embedding_dimension()
    smaller = sorted({d for d in recipe.train.matryoshka_dims if d < dimension}, reverse=True)
    prompts = mteb_prompts(model)
    meta = ModelMeta.from_sentence_transformer_model(model)
    meta = meta.model_copy(
        update={
            "name": repo_id,
            "revision": revision or "no_revision_available",
            "release_date": datetime.date.today().isoformat(),
            "languages": sorted({mteb_language(code) for code in recipe.synth.pair_languages()}) or None,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "embed_dim": [dimension, *smaller] if smaller else dimension,
            "license": recipe.publish.license,
            "open_weights": True,
            "public_training_code": TRAINING_CODE_URL,
            "reference": f"https://huggingface.co/{repo_id}",
            "use_instructions": bool(prompts),
            "loader_kwargs": {"model_prompts": prompts} if prompts else {},
            "training_datasets": (
                set(recipe.publish.mteb_training_datasets)
                if recipe.publish.mteb_training_datasets is not None
                else None
            ),
            "adapted_from": base_model_id(recipe.model.base) or meta.adapted_from,
        }
    )
    return meta.model_copy(update={"memory_usage_mb": meta.calculate_memory_usage_mb(fetch_from_hf=False)})


def write_mteb_submission(
    recipe: SectionView, release_dir: str | Path, output_dir: str | Path, revision: str | None = None
) -> Path:
    """Write the leaderboard submission of a release folder into ``output_dir`` (a new folder):

    - ``mteb/mteb/models/model_implementations/<name>_models.py``: the ``ModelMeta`` (pull request to
      ``embeddings-benchmark/mteb``);
    - ``results/results/<org>__<name>/<revision>/``: the task results and ``model_meta.json`` (pull request to
      ``embeddings-benchmark/results``);
    - ``hub/.eval_results/<Task>.yaml``: the Hub's evaluation results (also in the release folder);
    - ``README.md``: what is where, what was left out and why.

    ``revision`` defaults to the commit the publish stage pushed.

    Raises:
        PublishError: the folder exists and is not empty, the recipe has no ``publish.repo_id`` or
            ``publish.license``, or the release has no result on a task mteb knows.
    """
    release_dir, output_dir = Path(release_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise PublishError(f"--mteb-submission {output_dir}: the folder is not empty; name a new folder")
    repo_id = recipe.publish.repo_id
    if not repo_id:
        raise PublishError("publish.repo_id: the leaderboard names the model by its Hub repository; pass --repo")
    if not recipe.publish.license:
        raise PublishError("publish.license: the leaderboard needs the model's licence (e.g. mit, apache-2.0)")
    # The release's mteb results hold the base model's too; only the released model's are submitted.
    results_dir = release_dir / "mteb_results" / repo_id.replace("/", "__")
    known, local = leaderboard_results(results_dir) if results_dir.is_dir() else ({}, [])
    if not known:
        raise PublishError(
            f"{release_dir}: no result on a task mteb knows by name (local tasks: {', '.join(local) or 'none'}); "
            "add mteb tasks to eval.mteb_tasks (e.g. 'MTEB(Multilingual, v2):Retrieval') and rerun eval and publish"
        )
    revision = revision or pushed_revision(recipe.run_dir)
    meta = model_meta(recipe, release_dir, revision)

    staging = output_dir.with_name(f".{output_dir.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    variable = re.sub(r"\W", "_", repo_id.split("/")[-1]).lower()
    code = (
        '"""Written by st-retrofit: the ModelMeta of a retrofitted model."""\n\n'
        "from mteb.models.model_meta import ModelMeta, ScoringFunction\n"
        "from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper\n"
        f"{variable} = {meta.to_python()}"
    )
    implementation = staging / IMPLEMENTATIONS / f"{variable}_models.py"
    implementation.parent.mkdir(parents=True)
    implementation.write_text(code, encoding="utf-8")

    results_target = staging / "results" / "results" / meta.model_name_as_path() / meta.revision
    results_target.mkdir(parents=True)
    for path in known.values():
        shutil.copy2(path, results_target / path.name)
    (results_target / "model_meta.json").write_text(json.dumps(meta.to_dict(), indent=4, default=str))

    hub = staging / "hub" / ".eval_results"
    write_hub_eval_results(known, hub)
    (staging / "README.md").write_text(
        submission_readme(repo_id, meta.revision, sorted(known), local, implementation.relative_to(staging)),
        encoding="utf-8",
    )
    if output_dir.exists():
        output_dir.rmdir()
    staging.rename(output_dir)
    logger.info("MTEB submission of %s: %s (%d tasks)", repo_id, output_dir, len(known))
    return output_dir


def submission_readme(repo_id: str, revision: str, tasks: list[str], local: list[str], implementation: Path) -> str:
    lines = [
        f"# MTEB leaderboard submission: {repo_id}",
        "",
        f"Revision `{revision}`; {len(tasks)} tasks: {', '.join(tasks)}.",
        "",
        f"1. `{implementation.as_posix()}`: copy into a checkout of `embeddings-benchmark/mteb` (the `mteb/` folder",
        "   here is that repository's root), import the variable in the folder's `__init__` as the other models do,",
        "   and open a pull request.",
        "2. `results/`: copy into a checkout of `embeddings-benchmark/results` (`results/` here is its root) and open",
        "   a pull request that links the first.",
        "3. `hub/.eval_results/`: the Hub's evaluation results; the release folder has them already (a push of it",
        "   shows them on the model page).",
    ]
    if revision == "no_revision_available":
        lines += [
            "",
            "The model was not pushed yet: the leaderboard needs its Hub revision. Push the release",
            "(`st-retrofit publish RUN --repo ORG/NAME`), then write this submission again.",
        ]
    if local:
        lines += ["", f"Left out (local tasks, not on the leaderboard): {', '.join(local)}."]
    return "\n".join(lines) + "\n"
