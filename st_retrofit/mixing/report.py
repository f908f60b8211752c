"""What the mixture was: ``mixture.json`` and ``mixture.png`` beside a training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from st_retrofit.mixing.collator import RetrofitDataCollator
    from st_retrofit.mixing.sampler import TemperatureBatchSampler


def plot_mixture(groups: list[dict[str, Any]], path: str | Path, alpha: float) -> None:
    """Bars of each group's share of the rows against its share of the batches."""
    import numpy as np

    from st_retrofit.extras import pyplot

    plt = pyplot(Path(path).name)
    if plt is None:
        return

    names = [g["group"] for g in groups]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
    ax.bar(x - 0.2, [g["row_share"] for g in groups], width=0.4, label="share of rows")
    ax.bar(x + 0.2, [g["probability"] for g in groups], width=0.4, label=f"share of batches (alpha={alpha})")
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("fraction")
    top = max(max(g["row_share"], g["probability"]) for g in groups)
    ax.set_ylim(0, top * 1.35)  # headroom for the legend
    ax.legend(frameon=False, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_mixture_report(
    sampler: TemperatureBatchSampler,
    collator: RetrofitDataCollator | None,
    output_dir: str | Path,
    dataloader_workers: int = 0,
) -> Path:
    """Write ``mixture.json`` (sampler and collator settings, groups, negative-sampling counts) and ``mixture.png``.

    With ``dataloader_workers`` the collator ran in worker processes, whose counts this process never sees; the
    report says so instead of showing zeros."""
    output_dir = Path(output_dir)
    groups = sampler.describe()
    report = {"sampler": sampler.get_config_dict(), "groups": groups}
    if collator is not None:
        report["collator"] = collator.get_config_dict()
        if dataloader_workers:
            report["negative_sampling"] = {
                "unavailable": f"collated in {dataloader_workers} dataloader worker processes; their counts stay "
                "there (train with dataloader_num_workers: 0 to see them)"
            }
        else:
            report["negative_sampling"] = dict(collator.stats)
    path = output_dir / "mixture.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_mixture(groups, output_dir / "mixture.png", sampler.alpha)
    return path
