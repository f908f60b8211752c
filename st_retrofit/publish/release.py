"""The ``publish`` stage: assemble the release folder and, unless it is a dry run, push it to the Hub.

The release folder is exactly what gets uploaded: the merged model (safetensors, tokenizer, sentence-transformers
configuration with prompts), ``README.md`` (the model card), ``eval_results.json``, ``recipe.yaml``, the mteb
results (``mteb_results/``, mteb's layout) and the run manifest when there are any. The Hub
token comes from ``HF_TOKEN`` or the ``huggingface-cli login`` store; it is passed to the client and never
printed, logged or written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from st_retrofit.publish.errors import PublishError
from st_retrofit.runfolder import EVAL_RESULTS, EVAL_TABLE, PUSHED

if TYPE_CHECKING:
    from st_retrofit.config import SectionView

logger = logging.getLogger(__name__)


def build_release_folder(
    recipe: SectionView, model_dir: str | Path, eval_dir: str | Path | None, output_dir: str | Path
) -> Path:
    """Write the folder that would be pushed into ``output_dir`` (replacing what was there)."""
    from sentence_transformers import SentenceTransformer

    from st_retrofit.publish.card import DERIVATIVE_TERMS, render_model_card, teacher_source

    results_path = EVAL_RESULTS.inside(eval_dir) if eval_dir else None
    results = json.loads(results_path.read_text()) if results_path and results_path.is_file() else None
    if results is None and recipe.publish.require_eval:
        raise PublishError(
            "no evaluation results; run the eval stage first, or set publish.require_eval: false to publish without"
        )
    gate = release_gate(results or {}, recipe.publish.gate_tasks, recipe.publish.gate_tolerance)
    gate_tolerance = recipe.publish.gate_tolerance
    if gate["regressions"] and not recipe.publish.allow_regression:
        worse = ", ".join(f"{r['task']} {r['retrofitted']:.4f} < {r['base']:.4f}" for r in gate["regressions"])
        raise PublishError(
            f"the retrofitted model scores below its base on gate tasks ({worse}"
            f"{f' by more than {gate_tolerance}' if gate_tolerance else ''}); improve the run, or set "
            "publish.allow_regression: true to publish it anyway"
        )
    table_path = EVAL_TABLE.inside(eval_dir) if eval_dir else None
    table = table_path.read_text() if table_path and table_path.is_file() else None
    mteb_table = Path(eval_dir) / "mteb_comparison.md" if eval_dir else None
    if table and mteb_table and mteb_table.is_file():
        table += "\n**MTEB** (main score per task):\n\n" + mteb_table.read_text()

    output_dir = Path(output_dir)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    # Hard links: the release shares the merged weights with train/model instead of storing them twice.
    shutil.copytree(model_dir, output_dir, copy_function=_link_or_copy)
    model = SentenceTransformer(str(output_dir), device="cpu")
    card = render_model_card(recipe, model, results, table, recipe.publish.card_template, gate=gate)
    teacher = teacher_source(recipe)
    if teacher and teacher.get("license") in DERIVATIVE_TERMS:
        logger.warning(
            "%s was trained with %s as teacher: it is a derivative under the %s licence's terms (%s); the card says "
            "so%s",
            recipe.name,
            teacher.get("hub_id") or teacher["name"],
            teacher["license"],
            teacher.get("license_url"),
            f", and publish.license {recipe.publish.license!r} does not lift them"
            if recipe.publish.license and recipe.publish.license != teacher["license"]
            else "",
        )
    merge_record = output_dir / "merge.json"
    if merge_record.is_file():  # recipe section merge: the card lists the ingredients and their weights
        from st_retrofit.merge.folders import merge_card_section

        card = card.rstrip() + "\n\n" + merge_card_section(json.loads(merge_record.read_text())) + "\n"
    if recipe.publish.int8:
        add_onnx_files(model, output_dir)
    declare_requirements(output_dir)
    (output_dir / "README.md").unlink(missing_ok=True)  # a link to the trained model's own card: write a new file
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    if results is not None:
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (output_dir / "recipe.yaml").write_text(
        yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    mteb_results = Path(eval_dir) / "mteb" / "results" if eval_dir else None
    if mteb_results and mteb_results.is_dir():
        copy_mteb_results(
            mteb_results, output_dir / "mteb_results", f"st-retrofit/{recipe.name}", recipe.publish.repo_id
        )
        write_eval_results(output_dir, recipe.publish.repo_id)
    manifest = recipe.run_dir / "manifest.json"
    if manifest.is_file():
        shutil.copy(manifest, output_dir / "manifest.json")
    # Some writers create files 0600 (a temporary file renamed into place); a release is meant to be read by others.
    umask = os.umask(0)
    os.umask(umask)
    for path in output_dir.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
    return output_dir


def add_onnx_files(model: Any, output_dir: Path) -> list[str]:
    """``onnx/model.onnx`` and ``onnx/model_qint8.onnx`` of ``model`` into the release (the eval stage's
    ``onnx-int8`` scores were measured on these very files: both come from the export cache, keyed by the
    model's fingerprint)."""
    from st_retrofit.export.backends import exported_file
    from st_retrofit.export.onnx import INT8_FILE, ONNX_FILE

    (output_dir / "onnx").mkdir(exist_ok=True)
    for name, int8 in ((ONNX_FILE, False), (INT8_FILE, True)):
        _link_or_copy(str(exported_file(model, int8)), str(output_dir / name))
    return [ONNX_FILE, INT8_FILE]


def declare_requirements(folder: Path) -> dict[str, Any]:
    """Write the versions that can load the release into its ``config_sentence_transformers.json``
    (``requirements``, checked by sentence-transformers >= 6.0 before any module loads): the 6.x module layout,
    and st-retrofit only if a module's class comes from it (the shipped models use library modules only)."""
    from importlib.metadata import version

    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    requirements: dict[str, Any] = {
        "sentence-transformers": {"specifier": ">=6.0", "reason": "saved in the 6.x module layout"}
    }
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    if any(str(m.get("type", "")).startswith("st_retrofit") for m in modules):
        requirements["st-retrofit"] = {"specifier": f">={version('st-retrofit')}", "reason": "a module of st-retrofit"}
    config["requirements"] = requirements
    config_path.unlink(missing_ok=True)  # a hard link to the trained model's file: write a new one
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return requirements


def release_gate(results: dict, patterns: list[str], tolerance: float = 0.0) -> dict:
    """The gate tasks ``patterns`` select among the evaluated ones, with base and retrofitted scores, and those on
    which the retrofitted model scores more than ``tolerance`` below its base.

    Raises:
        ConfigError: ``publish.gate_tasks`` names a task that was not evaluated.
    """
    from fnmatch import fnmatchcase

    from st_retrofit.config import ConfigError

    if not patterns:
        return {"tasks": [], "regressions": [], "tolerance": tolerance}
    scores = {row["task"]: row for row in (results.get("mteb") or {}).get("rows", [])}
    if "base" in results and "retrofitted" in results:
        scores["heldout"] = {
            "base": results["base"]["mean"]["ndcg"],
            "retrofitted": results["retrofitted"]["mean"]["ndcg"],
        }
    chosen = {}
    for i, pattern in enumerate(patterns):
        matched = [task for task in sorted(scores) if fnmatchcase(task, pattern)]
        if not matched:
            raise ConfigError(
                f"publish.gate_tasks[{i}]",
                f"{pattern!r} matches no evaluated task; evaluated: {', '.join(sorted(scores))}",
            )
        chosen.update({task: scores[task] for task in matched})
    rows = [{"task": t, "base": r["base"], "retrofitted": r["retrofitted"]} for t, r in chosen.items()]
    regressions = [r for r in rows if r["retrofitted"] < r["base"] - tolerance]
    return {"tasks": rows, "regressions": regressions, "tolerance": tolerance}


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def copy_mteb_results(source: Path, target: Path, run_model: str, repo_id: str | None) -> None:
    """Copy mteb's results folder (``<model>/<revision>/<task>.json``), naming the retrofitted model's results after
    the repository it is published to: the eval stage names them after the run, since it reads no publish setting."""
    shutil.copytree(source, target)
    folder = target / run_model.replace("/", "__")
    if repo_id is None or not folder.is_dir():
        return
    renamed = target / repo_id.replace("/", "__")
    folder.rename(renamed)
    for meta in renamed.glob("*/model_meta.json"):
        data = json.loads(meta.read_text(encoding="utf-8"))
        data["name"] = repo_id
        meta.write_text(json.dumps(data, indent=4), encoding="utf-8")


def write_eval_results(release_dir: Path, repo_id: str | None) -> None:
    """The Hub's ``.eval_results/`` for the released model's results on tasks mteb knows by name (local tasks have
    no dataset on the Hub to point to)."""
    from st_retrofit.publish.mteb_submission import leaderboard_results, write_hub_eval_results

    folder = release_dir / "mteb_results" / (repo_id or "").replace("/", "__")
    if not repo_id or not folder.is_dir():
        return
    known, _ = leaderboard_results(folder)
    if known:
        write_hub_eval_results(known, release_dir / ".eval_results")


def push_release(
    folder: str | Path, repo_id: str, private: bool = True, token: str | None = None, endpoint: str | None = None
) -> str:
    """Upload ``folder`` to ``repo_id`` in one commit, check every file against the Hub's listing, and return the
    commit URL.

    The commit is atomic on the Hub's side: large files go to LFS storage first and the commit that makes them part
    of the repository comes last, so a failure anywhere leaves the previous revision as it was, and running again
    uploads only what is missing. ``endpoint`` defaults to ``$HF_ENDPOINT`` (read now, not at import) or the Hub.

    Raises:
        PublishError: no token, or a file whose hash on the Hub differs from the local one.
    """
    import os

    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PublishError("no Hub token: set HF_TOKEN or run `hf auth login` (the token is never printed)")
    api = HfApi(token=token, endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message="Publish with st-retrofit", repo_type="model"
    )
    verify_upload(api, repo_id, folder, commit.oid)
    logger.info("Pushed %s to %s (%s)", folder, repo_id, commit.oid)
    return commit.commit_url


def verify_upload(api, repo_id: str, folder: str | Path, revision: str) -> None:
    """Compare every file of ``folder`` with the Hub's listing at ``revision``: the sha256 of LFS files, the git
    blob hash of the others.

    Raises:
        PublishError: listing the files that are missing or differ.
    """
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if isinstance(entry, RepoFile)
    }
    folder = Path(folder)
    problems = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        entry = remote.get(name)
        if entry is None:
            problems.append(f"{name} (missing)")
            continue
        if entry.lfs is not None:  # weights: streamed, never read whole into memory
            with path.open("rb") as handle:
                ok = entry.lfs.sha256 == sha_fileobj(handle).hex()
        else:  # below the LFS threshold: small files
            ok = entry.blob_id == git_hash(path.read_bytes())
        if not ok:
            problems.append(f"{name} (hash differs)")
    if problems:
        raise PublishError(f"{repo_id}@{revision[:12]} does not match the release folder: {', '.join(problems)}")


def publish_stage(
    recipe: SectionView, model_dir: str | Path, eval_dir: str | Path | None, output_dir: str | Path
) -> Path:
    """Build the release folder; push it unless ``publish.dry_run``."""
    folder = build_release_folder(recipe, model_dir, eval_dir, Path(output_dir) / "release")
    if recipe.publish.dry_run:
        logger.info("Dry run: the release folder is written, not pushed (publish.dry_run)")
    else:
        url = push_release(folder, recipe.publish.repo_id, private=recipe.publish.private)
        PUSHED.inside(output_dir).write_text(json.dumps({"repo_id": recipe.publish.repo_id, "commit": url}))
    return folder
