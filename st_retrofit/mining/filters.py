"""Positive-aware rules that decide which retrieved candidates may become negatives.

Two kinds of rules:

- **exclusions**, by identity: a query's positives, and texts that equal a positive or the query once normalized
  (:func:`normalize_text`), are never negatives; of candidates that normalize to the same text only the best
  ranked is kept;
- **score filters** (:class:`NegativeFilter`), relative to the query's positive score. With several positives the
  lowest positive score is used, the cautious choice for catching false negatives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from st_retrofit.text import normalize_text


def duplicate_keys(texts: Sequence[str]) -> np.ndarray:
    """64-bit keys of the normalized texts; equal keys mean duplicates."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(normalize_text(t).encode(), digest_size=8).digest(), "little") for t in texts],
        dtype=np.uint64,
    )


def exclusion_masks(
    candidate_ids: np.ndarray, positive_ids: np.ndarray, corpus_keys: np.ndarray, query_keys: np.ndarray
) -> dict[str, np.ndarray]:
    """Which candidates are excluded, by reason (the reasons do not overlap: the first reason that applies wins).

    Args:
        candidate_ids: ``[n, k]`` corpus ids, ``-1`` where retrieval came up short.
        positive_ids: ``[n, p]`` corpus ids of each query's positives, padded with ``-1``.
        corpus_keys: :func:`duplicate_keys` of the whole corpus.
        query_keys: ``[n]`` :func:`duplicate_keys` of the queries.

    Returns:
        ``missing``, ``positive`` (a positive itself), ``duplicate`` (normalizes to a positive, to the query, or to
        a better-ranked candidate), each a boolean ``[n, k]`` mask.
    """
    missing = candidate_ids < 0
    positive = (candidate_ids[:, :, None] == positive_ids[:, None, :]).any(-1) & ~missing
    cand_keys = corpus_keys[np.maximum(candidate_ids, 0)]
    pos_keys = np.where(positive_ids >= 0, corpus_keys[np.maximum(positive_ids, 0)], np.uint64(0))
    reference = np.concatenate([pos_keys, query_keys[:, None]], axis=1)
    reference_valid = np.concatenate([positive_ids >= 0, np.ones((len(query_keys), 1), dtype=bool)], axis=1)
    same_as_reference = ((cand_keys[:, :, None] == reference[:, None, :]) & reference_valid[:, None, :]).any(-1)
    # A repeat of a better-ranked candidate: after a stable sort by key, every element equal to its left neighbour.
    order = np.argsort(cand_keys, axis=1, kind="stable")
    sorted_keys = np.take_along_axis(cand_keys, order, axis=1)
    sorted_missing = np.take_along_axis(missing, order, axis=1)
    repeat_sorted = np.zeros_like(sorted_missing)
    repeat_sorted[:, 1:] = (sorted_keys[:, 1:] == sorted_keys[:, :-1]) & ~sorted_missing[:, 1:]
    repeat = np.zeros_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    duplicate = (same_as_reference | repeat) & ~missing & ~positive
    return {"missing": missing, "positive": positive, "duplicate": duplicate}


@dataclass(frozen=True)
class NegativeFilter:
    """Score rules for hard-negative candidates; a candidate failing any rule is dropped.

    Args:
        absolute_margin: drop candidates with ``score > positive - absolute_margin`` (NV-Retriever's TopK-MarginPos).
        relative_margin: drop candidates with ``score > positive - |positive| * relative_margin``. Subtracting a
            share of ``|positive|`` keeps the rule right when scores are negative (``positive * (1 - m)`` would
            raise the bar for a negative positive).
        max_positive_ratio: NV-Retriever's TopK-PercPos: keep candidates scoring at most this fraction of the
            positive score (0.95 in the paper), written the sign-safe way, so it equals
            ``relative_margin = 1 - max_positive_ratio``; offered under the name papers use.
        max_score: drop candidates scoring above this (near-duplicates of the query).
        min_score: drop candidates scoring below this (too easy to teach anything).

    Example:
        ::

            rule = NegativeFilter(max_positive_ratio=0.95, min_score=0.2)
            keep, removed = rule.apply(scores, positive_scores)  # removed == {"max_positive_ratio": 12, ...}
    """

    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_positive_ratio: float | None = None
    max_score: float | None = None
    min_score: float | None = None

    def thresholds(self, positive_scores: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
        """``(rule, threshold per query, "above" | "below")`` for each rule that is set, in the order applied."""
        positive = positive_scores.astype(np.float32)
        rules = []
        if self.absolute_margin is not None:
            rules.append(("absolute_margin", positive - self.absolute_margin, "above"))
        if self.relative_margin is not None:
            rules.append(("relative_margin", positive - np.abs(positive) * self.relative_margin, "above"))
        if self.max_positive_ratio is not None:
            rules.append(("max_positive_ratio", positive - np.abs(positive) * (1 - self.max_positive_ratio), "above"))
        if self.max_score is not None:
            rules.append(("max_score", np.full_like(positive, self.max_score), "above"))
        if self.min_score is not None:
            rules.append(("min_score", np.full_like(positive, self.min_score), "below"))
        return rules

    def apply(self, scores: np.ndarray, positive_scores: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Apply the rules to ``scores`` ``[n, k]`` (``-inf`` = already excluded) given each row's positive score.

        Returns:
            The keep mask ``[n, k]`` and how many still-eligible candidates each rule removed.
        """
        keep = np.isfinite(scores)
        removed = {}
        for rule, threshold, side in self.thresholds(positive_scores):
            fails = scores > threshold[:, None] if side == "above" else scores < threshold[:, None]
            hit = fails & keep
            removed[rule] = int(hit.sum())
            keep &= ~hit
        return keep, removed
