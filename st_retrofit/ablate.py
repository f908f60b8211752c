"""``st-retrofit ablate``: run a grid of recipe variants and plot a metric across it, like the paper's figures.

An ablation file names a base recipe and one or two axes; every value of an axis is a set of recipe overrides::

    name: data-scale
    base: ../retrofit-300m.yaml           # relative to this file
    metric: ndcg                          # ndcg, recall or mrr of the eval stage (mean over languages)
    tasks: "*-dev"                        # optional: score on the eval stage's mteb tasks matching this pattern
    set: {train.args.num_train_epochs: 1}  # overrides for every variant
    x:
      label: synthetic pairs per language
      key: synth.max_per_language         # a plain value list sets this key...
      values: [500, 1000, 2000, 4000]
    series:                               # optional: one curve per value
      label: hard negatives
      values:                             # ...or each value is {label, set}
        - {label: in-batch only, set: {mining.enabled: false}}
        - {label: mined, set: {mining.enabled: true}}

Each variant is a full run in ``<output_dir>/<ablation name>/<variant>``, so the stage cache applies: a variant that
only changes training reuses its synthesized and mined data, and a rerun after an interruption skips finished
variants. Every variant is validated before the first one runs. The ablation folder gets ``results.json``,
``results.md`` and ``<metric>.png``.

Without ``tasks`` the metric is the eval stage's held-out score (the synthesized held-out split). With ``tasks`` (an
``fnmatch`` pattern such as ``"*-dev"``) it is the mean main score (nDCG@10 for retrieval) of the recipe's
``eval.mteb_tasks`` whose names match, and ``results.md`` adds one row per task: the ablation is then measured on
text people wrote, and the test tasks can stay unseen.

With ``soup: all`` (or a list of x labels) and ``tasks``, the grid ends in a uniform soup of those variants' trained
models (:func:`st_retrofit.merge.merge_models`), scored on the same tasks as one more row: the soup against the
best single variant and against their mean (Wortsman et al., 2022; EmbeddingGemma's release is such a soup).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from st_retrofit.config import ConfigError, ConfigModel, did_you_mean, keyed, load_yaml, require, validate_section
from st_retrofit.recipe import Recipe, load_recipe
from st_retrofit.runfolder import EVAL_RESULTS, MTEB_COMPARISON
from st_retrofit.tables import markdown_table

logger = logging.getLogger(__name__)

METRICS = ("ndcg", "recall", "mrr")
STAGES = ["synth", "mine", "train", "eval"]


@dataclass
class AxisValue:
    """One point of an axis: its label on the plot and the recipe overrides it applies."""

    label: str
    overrides: dict[str, Any]


@dataclass
class Axis:
    label: str
    values: list[AxisValue]


@dataclass
class Ablation:
    """A parsed ablation file (see the module docstring)."""

    name: str
    base: Path
    x: Axis
    series: Axis | None = None
    metric: str = "ndcg"
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    tasks: str | None = None
    soup: list[str] | None = None  # x labels of the variants to merge; every variant for "all"

    def variants(self) -> list[tuple[str, AxisValue | None, AxisValue]]:
        """``(folder name, series value, x value)`` for every cell of the grid, series first."""
        cells = []
        for series in self.series.values if self.series else [None]:
            for x in self.x.values:
                parts = ([series.label] if series else []) + [x.label]
                cells.append(("__".join(_slug(p) for p in parts), series, x))
        return cells


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "value"


class AxisPointConfig(ConfigModel):
    """One value of an axis written out: its label and the recipe overrides it applies."""

    label: str | int | float | None = Field(None, description="Label on the plot and in the folder name.")
    set: dict[str, Any] = Field(description="Recipe overrides: {recipe.key: value}.")


class AxisConfig(ConfigModel):
    """One axis of an ablation file (``x`` or ``series``).

    Args:
        label: the axis' name on the plot; ``null`` = ``key``.
        key: the recipe key that plain values set (``synth.max_per_language``).
        values: plain values (with ``key``) or ``{label, set}`` mappings; labels must differ, also as folder names.
    """

    label: str | None = Field(None, description="Axis name on the plot.")
    key: str | None = Field(None, description="Recipe key that plain values set.")
    values: list[Any] = Field(min_length=1, description="Plain values, or {label, set} mappings.")

    _points: list[AxisValue] = PrivateAttr(default_factory=list)  # the values as parsed, once

    @model_validator(mode="after")
    def _parse_points(self) -> AxisConfig:
        points = []
        for i, value in enumerate(self.values):
            if isinstance(value, dict):
                point = validate_section(AxisPointConfig, value, f"values[{i}]")
                points.append(AxisValue(str(point.label if point.label is not None else i), dict(point.set)))
            else:
                require(
                    bool(self.key), "key", "plain values need the recipe key they set (e.g. synth.max_per_language)"
                )
                points.append(AxisValue(str(value), {self.key: value}))
        labels = [p.label for p in points]
        require(len({_slug(label) for label in labels}) == len(labels), "values",
                f"labels must differ (also as folder names): {labels}")  # fmt: skip
        self._points = points
        return self

    def axis(self, name: str) -> Axis:
        return Axis(self.label or self.key or name, list(self._points))


class AblationConfig(ConfigModel):
    """An ablation file (see the module docstring); ``st-retrofit schema --ablation`` prints its JSON Schema.

    Args:
        name: the ablation's folder under the base recipe's ``output_dir``.
        base: the base recipe, relative to the ablation file.
        description: one line for the results.
        metric: ``ndcg``, ``recall`` or ``mrr`` of the eval stage (mteb tasks: ``ndcg``, their main score).
        set: recipe overrides for every variant.
        x: the axis of the plot.
        series: optional second axis: one curve per value.
        tasks: score on the eval stage's mteb tasks whose names match this pattern (``"*-dev"``).
        soup: ``all`` or two or more x labels: end in a uniform soup of those variants (needs ``tasks``, no
            ``series``).
    """

    name: str = Field(description="Folder of the ablation.")
    base: str = Field(description="Base recipe, relative to this file.")
    description: str = Field("", description="One line for the results.")
    metric: Literal["ndcg", "recall", "mrr"] = Field("ndcg", description="Metric of the eval stage.")
    set: dict[str, Any] = Field(default_factory=dict, description="Recipe overrides for every variant.")
    x: AxisConfig = Field(description="The plot's axis.")
    series: AxisConfig | None = Field(None, description="One curve per value.")
    tasks: str | None = Field(None, min_length=1, description='mteb task name pattern, e.g. "*-dev".')
    soup: str | list[str] | None = Field(None, description="all, or the x labels of the variants to soup.")

    @model_validator(mode="after")
    def _check(self) -> AblationConfig:
        require(self.tasks is None or self.metric == "ndcg", "metric",
                "mteb tasks are scored by their main score (nDCG@10 for retrieval): use ndcg")  # fmt: skip
        if self.soup is not None:
            labels = [value.label for value in self.x._points]
            chosen = labels if self.soup == "all" else self.soup
            require(isinstance(chosen, list) and len(chosen) >= 2 and all(label in labels for label in chosen), "soup",
                    f"expected all or a list of two or more x labels among {labels}")  # fmt: skip
            require(self.tasks is not None, "soup", 'a soup is scored on mteb tasks: set tasks (e.g. "*-dev")')
            require(self.series is None, "soup", "a soup merges the x variants of an ablation without series")
        return self


def ablation_schema() -> dict[str, Any]:
    """The JSON Schema of an ablation file (``st-retrofit schema --ablation``)."""
    schema = AblationConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "st-retrofit ablation"
    return schema


def load_ablation(path: str | Path) -> Ablation:
    """Read an ablation file; errors name the key (``x.values[2]``, ``metric``...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("ablation", f"file {path} does not exist")
    with keyed("ablation"):
        data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError("ablation", f"{path} must be a mapping")
    config = validate_section(AblationConfig, data)
    base = (path.parent / config.base).resolve()
    if not base.is_file():
        raise ConfigError("base", f"recipe {base} does not exist")
    x = config.x.axis("x")
    return Ablation(
        name=_slug(config.name),
        base=base,
        x=x,
        series=config.series.axis("series") if config.series else None,
        metric=config.metric,
        overrides=config.set,
        description=config.description,
        tasks=config.tasks,
        soup=[value.label for value in x.values] if config.soup == "all" else config.soup,
    )


def _assignments(overrides: dict[str, Any]) -> list[str]:
    # --set parses values as YAML, so JSON (a YAML subset) carries lists and mappings through unchanged.
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]


def variant_recipes(
    ablation: Ablation, extra: list[str] | None = None
) -> list[tuple[str, AxisValue | None, AxisValue, Recipe]]:
    """Every variant's recipe, validated. Errors name the variant and the key."""
    base_output = load_recipe(ablation.base, extra, check=False).output_dir
    out = []
    for folder, series, x in ablation.variants():
        overrides = {**ablation.overrides, **(series.overrides if series else {}), **x.overrides}
        assignments = _assignments(overrides) + list(extra or [])
        assignments += [
            f"name={json.dumps(folder)}",
            f"output_dir={json.dumps(str(Path(base_output) / ablation.name))}",
        ]
        try:
            recipe = load_recipe(ablation.base, assignments)
        except ConfigError as exc:
            raise ConfigError(exc.key, f"{exc.message} (in variant {folder})") from None
        out.append((folder, series, x, recipe))
    return out


def run_ablation(ablation: Ablation, extra: list[str] | None = None, only: list[str] | None = None) -> Path:
    """Run every variant (finished ones are skipped), then write the table and the plot. Returns the folder.

    ``only`` names the variants to run (folder names or x labels), in the file's order; the table and the soup
    cover those and every other variant already finished with its current settings (one measured at a time, the
    table grows). Every variant is still validated first.
    """
    from st_retrofit.pipeline import is_up_to_date, run_pipeline

    variants = variant_recipes(ablation, extra)
    folder = variants[0][3].run_dir.parent
    if only:
        names = {name for name, *_ in variants} | {x.label for _, _, x, _ in variants}
        for i, wanted in enumerate(only):
            if wanted not in names:
                known = [name for name, *_ in variants]
                raise ConfigError(f"--only[{i}]", f"no variant {wanted!r}{did_you_mean(wanted, known, 'variants')}")
        chosen = [v[0] in only or v[2].label in only for v in variants]
        # A variant left out counts only when every stage is done with the settings the file gives it now.
        variants = [v for v, run in zip(variants, chosen, strict=True)
                    if run or all(is_up_to_date(v[3], stage) for stage in STAGES)]  # fmt: skip
        to_run = {name for name, _, x, _ in variants if name in only or x.label in only}
    else:
        to_run = {name for name, *_ in variants}
    rows = []
    for i, (name, series, x, recipe) in enumerate(variants, 1):
        if name in to_run:
            logger.info("Ablation %s: variant %d of %d, %s", ablation.name, i, len(variants), name)
            run_pipeline(recipe, stages=STAGES)
        row = {"variant": name, "series": series.label if series else None, "x": x.label}
        if ablation.tasks is None:
            results = json.loads(EVAL_RESULTS.at(recipe.run_dir).read_text())
            row |= {side: {m: results[side]["mean"][m] for m in METRICS} for side in ("retrofitted", "base")}
        else:
            row |= mteb_scores(recipe, ablation.tasks)
        rows.append(row | {"run_dir": str(recipe.run_dir)})
    if ablation.soup is not None:
        rows.append(soup_row(ablation, variants, folder))
    summary = {
        "name": ablation.name,
        "description": ablation.description,
        "base_recipe": _shown(ablation.base),
        "metric": ablation.metric,
        "x": ablation.x.label,
        "series": ablation.series.label if ablation.series else None,
        "tasks": ablation.tasks,
        "rows": rows,
    }
    (folder / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (folder / "results.md").write_text(results_table(summary) + "\n", encoding="utf-8")
    plot_ablation(summary, folder / f"{ablation.metric}.png")
    return folder


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it: results files travel between machines."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def soup_row(ablation: Ablation, variants: list, folder: Path) -> dict[str, Any]:
    """Merge the soup's variants (uniform soup) into ``<ablation>/soup/model`` and score it like the variants."""
    import shutil

    from st_retrofit.evaluation.mteb import resolve_tasks, run_mteb
    from st_retrofit.merge.folders import merge_folders
    from st_retrofit.models.resolve import load_model

    runs = [str(recipe.run_dir) for _, _, x, recipe in variants if x.label in ablation.soup]
    model_dir = folder / "soup" / "model"
    record = model_dir / "merge.json"
    if model_dir.exists() and [i["model"] for i in json.loads(record.read_text())["ingredients"]] != runs:
        shutil.rmtree(model_dir)  # a soup of other variants: derived data, made again below
    if not model_dir.exists():
        merge_folders(runs, model_dir)
    recipe = variants[0][3]
    model = load_model(str(model_dir))
    model.max_seq_length = recipe.model.max_seq_length
    tasks = resolve_tasks(list(recipe.eval.mteb_tasks))
    scores = run_mteb(model, f"{ablation.name}/soup", tasks, folder / "soup" / "mteb", recipe.eval.batch_size)
    scores = {task: score for task, score in scores.items() if fnmatch.fnmatchcase(task, ablation.tasks)}
    base = mteb_scores(recipe, ablation.tasks)
    return {
        "variant": "soup",
        "series": None,
        "x": f"uniform soup of {len(runs)}",
        "retrofitted": {"ndcg": sum(scores.values()) / len(scores)},
        "retrofitted_per_task": scores,
        "base": base["base"],
        "base_per_task": base["base_per_task"],
        "run_dir": str(model_dir),
        "ingredients": runs,
    }


def mteb_scores(recipe: Recipe, pattern: str) -> dict[str, Any]:
    """The eval stage's mteb main scores on the tasks matching ``pattern``: the mean (as ``ndcg``) and per task."""
    comparison = json.loads(MTEB_COMPARISON.at(recipe.run_dir).read_text())
    rows = [row for row in comparison["rows"] if fnmatch.fnmatchcase(row["task"], pattern)]
    if not rows:
        tasks = [row["task"] for row in comparison["rows"]]
        raise ConfigError("tasks", f"no mteb task of the eval stage matches {pattern!r}; its tasks are {tasks}")
    out: dict[str, Any] = {}
    for side in ("retrofitted", "base"):
        out[side] = {"ndcg": sum(row[side] for row in rows) / len(rows)}
        out[f"{side}_per_task"] = {row["task"]: row[side] for row in rows}
    return out


def results_table(summary: dict) -> str:
    """Markdown: one row per variant with the base and retrofitted metric."""
    metric = summary["metric"]
    head = ([summary["series"]] if summary["series"] else []) + [
        summary["x"],
        f"base {metric}",
        f"retrofitted {metric}",
        "Δ",
    ]
    rows = []
    for row in summary["rows"]:
        b, t = row["base"][metric], row["retrofitted"][metric]
        rows.append(
            ([row["series"]] if summary["series"] else []) + [row["x"], f"{b:.4f}", f"{t:.4f}", f"{t - b:+.4f}"]
        )
    table = markdown_table(head, rows)
    soup = next((row for row in summary["rows"] if row["variant"] == "soup"), None)
    if soup is not None:
        singles = [row for row in summary["rows"] if row is not soup and row["run_dir"] in soup.get("ingredients", [])]
        singles = singles or [row for row in summary["rows"] if row is not soup]
        best = max(singles, key=lambda row: row["retrofitted"][metric])
        mean = sum(row["retrofitted"][metric] for row in singles) / len(singles)
        table += (
            f"\n\nSoup {soup['retrofitted'][metric]:.4f} against the best single variant "
            f"({best['x']}) {best['retrofitted'][metric]:.4f} and the mean of its {len(singles)} ingredients {mean:.4f}."
        )
    if summary.get("tasks"):
        table += "\n\n" + per_task_table(summary)
    return table


def per_task_table(summary: dict) -> str:
    """Markdown: one row per mteb task, the base and every variant (x100), the means last."""
    variants = summary["rows"]
    tasks = sorted(set.intersection(*(set(row["retrofitted_per_task"]) for row in variants)))
    labels = [" / ".join(filter(None, (row["series"], row["x"]))) for row in variants]
    base = variants[0]["base_per_task"]
    rows = [[task, f"{100 * base[task]:.1f}", *(f"{100 * r['retrofitted_per_task'][task]:.1f}" for r in variants)]
            for task in tasks]  # fmt: skip
    means = [sum(scores[task] for task in tasks) / len(tasks) for scores in
             [base, *(r["retrofitted_per_task"] for r in variants)]]  # fmt: skip
    rows.append([f"**mean** ({len(tasks)})", *(f"**{100 * m:.1f}**" for m in means)])
    return markdown_table([f"task ({summary['tasks']}, nDCG@10 x100)", "base", *labels], rows)


def plot_ablation(summary: dict, path: Path) -> None:
    """The metric against the x axis, one line per series, the base model dashed."""
    from st_retrofit.extras import pyplot

    plt = pyplot(path.name)
    if plt is None:
        return

    metric = summary["metric"]
    labels = list(dict.fromkeys(row["x"] for row in summary["rows"]))
    positions = {label: i for i, label in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) + 2), 3.6), dpi=150)
    bases = {round(row["base"][metric], 6) for row in summary["rows"]}
    for series in dict.fromkeys(row["series"] for row in summary["rows"]):
        rows = [row for row in summary["rows"] if row["series"] == series]
        (line,) = ax.plot([positions[r["x"]] for r in rows], [r["retrofitted"][metric] for r in rows], marker="o",
                          label=series or "retrofitted")  # fmt: skip
        if len(bases) > 1:  # the series evaluate on different held-out data: one base line each
            ax.plot([positions[r["x"]] for r in rows], [r["base"][metric] for r in rows], linestyle="--",
                    linewidth=1, color=line.get_color(), label=f"{series}: base model")  # fmt: skip
    if len(bases) == 1:
        base = summary["rows"][0]["base"][metric]
        ax.axhline(base, color="grey", linestyle="--", linewidth=1, label=f"base model ({base:.3f})")
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=20 if max(map(len, labels)) > 8 else 0,
        ha="right" if max(map(len, labels)) > 8 else "center",
    )
    ax.set_xlabel(summary["x"])
    ax.set_ylabel(f"mean {metric}@10 ({summary['tasks']})" if summary.get("tasks") else f"mean {metric}@k (held-out)")
    ax.set_title(summary["name"])
    ax.grid(alpha=0.3)
    ax.legend(title=summary["series"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
