"""Validation shared by the mixing classes and the recipe's ``mixing`` section.

Kept free of torch and sentence-transformers imports, so that a recipe is checked before anything heavy loads.
Every error is a :class:`~st_retrofit.config.ConfigError` naming the setting, so the recipe reports it under its
key path (``mixing.alpha``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from st_retrofit.config import ConfigError

# "random" is mining's (and mine_hard_negatives') name for the same draw; "uniform" was ours before 0.2.
SAMPLING_MODES = ("random", "teacher", "top")
PROMPT_SIDES = ("query", "document", "both")
LABEL_MODES = ("dict", "teacher_scores", "none")

# Columns that hold labels for sentence-transformers (its DEFAULT_LABEL_COLUMNS).
LABEL_COLUMNS = ("label", "labels", "score", "scores")
# Metadata that st-retrofit's own stages write (languages, synthetic-data provenance); never trained on as text.
METADATA_COLUMNS = ("id", "language", "query_language", "source", "template", "backend", "model", "seed")
DATASET_NAME_COLUMN = "dataset_name"


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def sampling_mode(value: str) -> str:
    """``value``, with the pre-0.2 ``uniform`` read as ``random`` (and a warning naming the new value)."""
    if value == "uniform":
        warnings.warn("sampling 'uniform' is now 'random' (the name mining uses)", FutureWarning, stacklevel=3)
        return "random"
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sampler_settings(
    alpha: float,
    weights: Mapping[str, float] | None,
    caps: Mapping[str, int] | None,
    group_by: str | Sequence[str],
    num_batches: int | None,
) -> list[str]:
    """Validate the sampler's settings and return ``group_by`` as a list."""
    _require(_is_number(alpha) and 0 <= alpha <= 1, "alpha", f"expected a number in [0, 1], got {alpha!r}")
    for name, weight in (weights or {}).items():
        _require(_is_number(weight) and weight > 0, f"weights.{name}", f"expected a number > 0, got {weight!r}")
    for name, cap in (caps or {}).items():
        _require(
            isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1,
            f"caps.{name}",
            f"expected an integer >= 1 (rows), got {cap!r}",
        )
    groups = [group_by] if isinstance(group_by, str) else list(group_by)
    _require(
        bool(groups) and all(isinstance(g, str) and g for g in groups),
        "group_by",
        f"expected 'dataset', a column name, or a list of them, got {group_by!r}",
    )
    _require(len(set(groups)) == len(groups), "group_by", f"names a key twice: {groups}")
    _require(
        num_batches is None or (isinstance(num_batches, int) and num_batches >= 1),
        "num_batches",
        f"expected an integer >= 1 or None, got {num_batches!r}",
    )
    return groups


def check_prompts(prompts: str | Mapping[str, Any] | None) -> None:
    """Prompts are one string, or ``{task: str | {"query"|"document"|<column>: str}}`` ("*" = any other task)."""
    if prompts is None or isinstance(prompts, str):
        return
    _require(isinstance(prompts, Mapping), "prompts", f"expected a string or a mapping of tasks, got {prompts!r}")
    for task, entry in prompts.items():
        if isinstance(entry, Mapping):
            for side, text in entry.items():
                _require(isinstance(text, str), f"prompts.{task}.{side}", f"expected a string, got {text!r}")
        else:
            _require(
                isinstance(entry, str),
                f"prompts.{task}",
                f"expected a string or a mapping of 'query'/'document' to strings, got {entry!r}",
            )


def check_collator_settings(
    num_negatives: int,
    range_min: int,
    range_max: int | None,
    sampling: str,
    sampling_temperature: float,
    prompt_side: str,
    labels: str,
    prompts: str | Mapping[str, Any] | None,
) -> None:
    """Validate the collator's settings."""
    _require(
        isinstance(num_negatives, int) and num_negatives >= 0,
        "num_negatives",
        f"expected an integer >= 0, got {num_negatives!r}",
    )
    _require(
        isinstance(range_min, int) and range_min >= 0, "range_min", f"expected an integer >= 0, got {range_min!r}"
    )
    _require(
        range_max is None or (isinstance(range_max, int) and range_max > range_min),
        "range_max",
        f"expected an integer > range_min ({range_min}) or None, got {range_max!r}",
    )
    _require(sampling in SAMPLING_MODES, "sampling", f"expected one of {SAMPLING_MODES}, got {sampling!r}")
    _require(
        _is_number(sampling_temperature) and sampling_temperature > 0,
        "sampling_temperature",
        f"expected a number > 0, got {sampling_temperature!r}",
    )
    _require(prompt_side in PROMPT_SIDES, "prompt_side", f"expected one of {PROMPT_SIDES}, got {prompt_side!r}")
    _require(labels in LABEL_MODES, "labels", f"expected one of {LABEL_MODES}, got {labels!r}")
    check_prompts(prompts)
