"""The mining report: who scored, with which settings, what each rule removed, and the score distributions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasets import DatasetDict

    from st_retrofit.mining.config import MiningConfig

logger = logging.getLogger(__name__)

HISTOGRAM_BINS = 50


def _label_scores(dataset: DatasetDict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive scores per row, negative scores, and the positive minus each of its row's negatives."""
    positives, negatives, margins = [np.empty(0, dtype=np.float32)], [np.empty(0, dtype=np.float32)], []
    for split in dataset.values():
        if not len(split):
            continue
        column = split.data.table.column("label").combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.float32)
        lengths = np.diff(offsets)
        pos = values[offsets[:-1]]
        is_negative = np.ones(len(values), dtype=bool)
        is_negative[offsets[:-1]] = False
        neg = values[is_negative]
        positives.append(pos)
        negatives.append(neg)
        margins.append(np.repeat(pos, lengths - 1) - neg)
    margins = margins or [np.empty(0, dtype=np.float32)]
    return np.concatenate(positives), np.concatenate(negatives), np.concatenate(margins)


def score_summary(values: np.ndarray) -> dict[str, float | int | None]:
    """Count, mean, std, min, 5/25/50/75/95th percentiles and max."""
    if not len(values):
        return {"count": 0}
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return {
        "count": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p5": float(q[0]),
        "p25": float(q[1]),
        "p50": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
        "max": float(values.max()),
    }


def build_report(
    dataset: DatasetDict,
    shard_stats: list[dict[str, Any]],
    config: MiningConfig,
    seed: int,
    teacher: dict[str, Any],
    cross_encoder: dict[str, Any] | None,
    plan: dict[str, Any],
    cache: dict[str, Any],
    shards: dict[str, int],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Everything a reader needs to trust (or question) a mined dataset, as JSON-ready data.

    ``removed`` counts the candidates each score rule removed (in the order applied) and ``excluded`` those that
    were positives or duplicates; ``available_negatives[i]`` counts query units with ``i`` eligible negatives
    (the last bucket: ``num_negatives`` or more). Score summaries are over the rows kept.
    """
    removed: dict[str, int] = {}
    excluded: dict[str, int] = {}
    available = np.zeros(config.num_negatives + 1, dtype=np.int64)
    retrieved = rows = rows_short = 0
    for stats in shard_stats:
        for key, value in stats["removed"].items():
            removed[key] = removed.get(key, 0) + value
        for key, value in stats["excluded"].items():
            excluded[key] = excluded.get(key, 0) + value
        available += np.asarray(stats["available"], dtype=np.int64)
        retrieved += stats["retrieved"]
        rows += stats["rows"]
        rows_short += stats["rows_short"]
    positives, negatives, margins = _label_scores(dataset)
    edges = None
    if len(positives) or len(negatives):
        both = np.concatenate([positives, negatives])
        low, high = float(both.min()), float(both.max())
        edges = np.linspace(low, high if high > low else low + 1e-6, HISTOGRAM_BINS + 1)
    histogram = (
        {
            "edges": edges.tolist(),
            "positive": np.histogram(positives, edges)[0].tolist(),
            "negative": np.histogram(negatives, edges)[0].tolist(),
        }
        if edges is not None
        else None
    )
    rows_out = sum(len(split) for split in dataset.values())
    return {
        "teacher": teacher,
        "cross_encoder": cross_encoder,
        "settings": config.model_dump(mode="json"),
        "range_max": config.resolved_range_max,
        "seed": seed,
        "output": config.output,
        "rows_in": plan["rows_in"],
        "rows_out": rows_out,
        "rows_short_of_negatives": rows_short,
        "rows_dropped": plan["rows_in"] - rows_out,
        "unique_queries": plan["unique_queries"],
        "corpus": plan["corpus"],
        "groups": {
            name: {**info, "rows_out": len(dataset[name]) if name in dataset else 0}
            for name, info in plan["groups"].items()
        },
        "candidates_retrieved": retrieved,
        "excluded": excluded,
        "removed": removed,
        "available_negatives": available.tolist(),
        "scores": {
            "positive": score_summary(positives),
            "negative": score_summary(negatives),
            "positive_minus_negative": score_summary(margins),
        },
        "histogram": histogram,
        "cache": cache,
        "shards": shards,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def plot_score_distributions(report: dict[str, Any], path: str | Path) -> Path | None:
    """Overlaid histograms of positive and negative scores; a healthy run shows two humps with a clear gap."""
    histogram = report.get("histogram")
    if not histogram:
        return None
    from st_retrofit.extras import pyplot

    plt = pyplot(Path(path).name)
    if plt is None:
        return None

    edges = np.asarray(histogram["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(centers, histogram["negative"], width=width, alpha=0.6, label="negatives")
    ax.bar(centers, histogram["positive"], width=width, alpha=0.6, label="positives")
    scorer = "cross-encoder" if report.get("cross_encoder") else "teacher"
    ax.set_xlabel(f"{scorer} score")
    ax.set_ylabel("count")
    ax.set_title(f"Mined scores ({report['rows_out']} rows, {report['rows_short_of_negatives']} short)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
