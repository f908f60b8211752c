"""Model card rendering: Hub metadata (with the evaluation as ``model-index``) plus a Jinja2 body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.runfolder import MINING_REPORT

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from st_retrofit.config import SectionView

DEFAULT_TEMPLATE = Path(__file__).with_name("model_card_template.md")
PAPER_URL = "https://arxiv.org/abs/2510.14274"


def eval_results(results: dict[str, Any], dataset_name: str) -> list:
    """``huggingface_hub.EvalResult`` entries for the retrofitted model's per-language and mean scores."""
    from huggingface_hub import EvalResult

    from st_retrofit.evaluation.heldout import MIN_HELDOUT_QUERIES

    k = results["k"]
    entries = []
    if results["retrofitted"].get("mean", {}).get("queries", MIN_HELDOUT_QUERIES) < MIN_HELDOUT_QUERIES:
        return entries  # too few queries to mean anything; the card's text says so
    for language, scores in results["retrofitted"].items():
        for metric in ("ndcg", "recall"):
            entries.append(
                EvalResult(
                    task_type="retrieval",
                    task_name="Retrieval",
                    dataset_type=dataset_name,
                    dataset_name=f"{dataset_name} ({language})",
                    dataset_config=language,
                    dataset_split="eval",
                    metric_type=f"{metric}_at_{k}",
                    metric_name=f"{metric.upper() if metric == 'ndcg' else metric.capitalize()}@{k}",
                    metric_value=round(scores[metric], 4),
                )
            )
    return entries


def mteb_eval_results(mteb: dict[str, Any]) -> list:
    """``huggingface_hub.EvalResult`` entries for the retrofitted model's mteb scores (one per task, its main
    score), named the way MTEB results are on the Hub (``MTEB <task>``)."""
    from huggingface_hub import EvalResult

    entries = []
    for row in mteb["rows"]:
        task, value = row["task"], row.get("retrofitted")
        if value is None:
            continue
        entries.append(
            EvalResult(
                task_type=mteb.get("task_types", {}).get(task, "Retrieval"),
                dataset_type=f"mteb/{task}",
                dataset_name=f"MTEB {task}",
                dataset_config="default",
                dataset_split="test",
                metric_type=mteb.get("main_scores", {}).get(task, "main_score"),
                metric_value=round(value, 4),
                source_name="MTEB",
                source_url="https://github.com/embeddings-benchmark/mteb",
            )
        )
    return entries


def data_description(recipe: SectionView) -> str:
    """One line on the training data: the synthetic pairs and the other sources."""
    parts = [recipe.synth.describe()]
    if not recipe.data.synthetic:
        parts = []
    parts += [f"`{s.path}`" + (f" ({s.config_name})" if s.config_name else "") for s in recipe.data.sources]
    return "; ".join(parts)


def mixing_description(recipe: SectionView) -> str:
    """One line on how batches were drawn and collated."""
    from st_retrofit.mining.layouts import OUTPUT_LAYOUTS

    mixing = recipe.mixing
    # The mined splits are the mining groups (languages in the quickstart), so name those.
    split = recipe.mining.group_by if recipe.mining.enabled and recipe.mining.group_by else "dataset"
    groups = " and ".join(split if g == "dataset" else g for g in mixing.group_by)
    text = f"temperature sampling with alpha={mixing.alpha}, one {groups} per batch"
    if mixing.weights:
        text += f", weights {mixing.weights}"
    if mixing.caps:
        text += f", caps {mixing.caps}"
    if recipe.mining.enabled and OUTPUT_LAYOUTS[recipe.mining.output].draws_per_epoch:
        k = mixing.num_negatives if mixing.num_negatives is not None else recipe.mining.num_negatives
        end = "" if mixing.range_max is None else mixing.range_max
        text += f"; {k} negatives drawn per row and epoch from the mined pool (ranks [{mixing.range_min}, {end}), "
        text += f"{mixing.sampling} sampling)"
    if mixing.prompts:
        text += "; per-task prompts (saved in the model's prompts)"
    return text


# Licences whose terms reach models trained on the licensed model's outputs (a card must say so).
DERIVATIVE_TERMS = {
    "gemma": "a model trained on its outputs (here: its scores and embeddings) is a *Model Derivative* under the "
    "Gemma Terms of Use, which, with the Gemma Prohibited Use Policy, apply to this model too",
}


def teacher_source(recipe: SectionView) -> dict[str, Any] | None:
    """The mining report's record of the teacher (name, Hub id, licence, verified sha256), when it mined."""
    report = MINING_REPORT.at(recipe.run_dir)
    if not recipe.mining.enabled or not report.is_file():
        return None
    teacher = json.loads(report.read_text(encoding="utf-8")).get("teacher") or {}
    if not teacher:
        return None
    source = dict(teacher.get("source") or {"name": teacher.get("name")})
    source["fingerprint"] = teacher.get("fingerprint")
    source["distilled"] = distills_teacher(recipe)
    return source


def distills_teacher(recipe: SectionView) -> bool:
    """Whether training reads the teacher's outputs beyond choosing negatives (scores or embeddings)."""
    from st_retrofit.losses.labels import label_key, reads_teacher_embeddings

    kwargs = recipe.train.loss_kwargs
    scored = any(kwargs.get(k) for k in ("distill_weight", "teacher_margin"))
    classes = [recipe.train.loss_class(), *(term.loss_class() for term in recipe.train.losses)]
    # Library losses that read a teacher output (scores or embeddings) are in the label registry.
    return scored or any(reads_teacher_embeddings(c) or label_key(c) is not None for c in classes)


def int8_summary(recipe: SectionView, results: dict | None) -> dict | None:
    """The eval stage's ``onnx-int8`` scores with the fp32 model's beside them, when the release carries int8."""
    entry = ((results or {}).get("backends") or {}).get("onnx-int8")
    if not recipe.publish.int8 or entry is None:
        return None
    return {**entry, "fp32_heldout_ndcg": results["retrofitted"]["mean"]["ndcg"]}


def render_model_card(
    recipe: SectionView,
    model: SentenceTransformer,
    results: dict[str, Any] | None,
    results_table: str | None,
    template_path: str | Path | None = None,
    gate: dict | None = None,
) -> str:
    """The README.md text for the published model."""
    from huggingface_hub import ModelCard, ModelCardData

    from st_retrofit.evaluation.heldout import MIN_HELDOUT_QUERIES
    from st_retrofit.evaluation.stage import dimensions_table
    from st_retrofit.models import base_model_id

    base = base_model_id(recipe.model.base) or recipe.model.base
    repo_id = recipe.publish.repo_id or f"<org>/{recipe.name}"
    model_name = repo_id.split("/")[-1]
    languages = recipe.synth.pair_languages()
    teacher = teacher_source(recipe)
    terms = DERIVATIVE_TERMS.get((teacher or {}).get("license") or "")
    card_data = ModelCardData(
        language=list(languages) or None,
        # A derivative carries its teacher's terms: without a licence of its own, the card names the teacher's.
        license=recipe.publish.license or (teacher["license"] if terms else None),
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=["sentence-transformers", "feature-extraction", "retrieval", "st-retrofit", "retrofitting"]
        + (["lora"] if recipe.model.lora else []),
        base_model=base,
        model_name=model_name,
        eval_results=(
            eval_results(results, f"{recipe.name}-heldout") + mteb_eval_results(results.get("mteb") or {"rows": []})
            if results
            else None
        ),
    )
    lora = recipe.model.lora
    mining = recipe.mining
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or DEFAULT_TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if "/" in base else PAPER_URL,
        dimension=model.get_embedding_dimension(),
        prompts={k: v for k, v in model.prompts.items() if v},
        example_query=recipe.synth.source_entry.example[0],
        example_document=recipe.synth.source_entry.example[1],
        results_table=results_table or "No evaluation results were published with this model.",
        heldout_description=recipe.synth.source_entry.heldout,
        heldout_queries=(results or {}).get("retrofitted", {}).get("mean", {}).get("queries"),
        min_heldout_queries=MIN_HELDOUT_QUERIES,
        has_mteb_results=bool(results and results.get("mteb")),
        int8=int8_summary(recipe, results),
        k=recipe.eval.k,
        max_seq_length=model.max_seq_length,
        gate=gate or {"tasks": [], "regressions": []},
        data_description=data_description(recipe),
        mining_description=(
            f"{mining.num_negatives} per query mined with `{mining.teacher}` "
            f"(relative margin {mining.relative_margin}, scoped by {mining.group_by or 'nothing'})"
            if mining.enabled
            else "none (in-batch negatives only)"
        ),
        mixing_description=mixing_description(recipe),
        teacher=teacher,
        teacher_terms=terms,
        loss=recipe.train.loss,
        loss_kwargs=", ".join(f"{k}={v}" for k, v in recipe.train.loss_kwargs.items()),
        adapter_description=(
            f"LoRA r={lora.r}, alpha={lora.alpha} on {', '.join(lora.target_modules)}, merged into the weights"
            if lora
            else "none (full fine-tuning)"
        ),
        training_args=", ".join(f"{k}={v}" for k, v in recipe.train.args.items()),
        matryoshka={
            "sizes": [
                model.get_embedding_dimension(),
                *(d for d in recipe.train.matryoshka_dims if d < model.get_embedding_dimension()),
            ]
            if recipe.train.matryoshka_dims
            else [],
            "table": dimensions_table(results, recipe.eval.k) if results and results.get("dimensions") else "",
        },  # fmt: skip
        seed=recipe.seed,
    )
    return str(card)
