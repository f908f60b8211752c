from __future__ import annotations

import numpy as np
import pytest

from st_retrofit.mining import NegativeFilter, normalize_text
from st_retrofit.mining.filters import duplicate_keys, exclusion_masks

SCORES = np.array([[0.95, 0.85, 0.75, 0.5, 0.1]], dtype=np.float32)
POSITIVE = np.array([0.9], dtype=np.float32)


def _kept(rule: NegativeFilter, scores=SCORES, positive=POSITIVE) -> list[float]:
    keep, _ = rule.apply(scores, positive)
    return [round(float(s), 2) for s in scores[keep]]


def test_absolute_margin_drops_candidates_within_the_margin_below_the_positive():
    assert _kept(NegativeFilter(absolute_margin=0.1)) == [0.75, 0.5, 0.1]


def test_relative_margin_drops_candidates_above_the_positive_minus_a_share_of_it():
    # threshold 0.9 - 0.9 * 0.1 = 0.81
    assert _kept(NegativeFilter(relative_margin=0.1)) == [0.75, 0.5, 0.1]


def test_relative_margin_stays_below_a_negative_positive_score():
    scores = np.array([[-0.45, -0.52, -0.6, -0.9]], dtype=np.float32)
    # positive -0.5: threshold -0.5 - 0.5 * 0.1 = -0.55; "positive * (1 - margin)" would have kept -0.45 and -0.52.
    assert _kept(NegativeFilter(relative_margin=0.1), scores, np.array([-0.5], np.float32)) == [-0.6, -0.9]


def test_max_positive_ratio_is_topk_percpos_and_equals_relative_margin_of_one_minus_ratio():
    # NV-Retriever: keep negatives scoring at most 95% of the positive.
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(50, 20)).astype(np.float32)
    positive = rng.uniform(-1, 1, size=50).astype(np.float32)
    ratio, _ = NegativeFilter(max_positive_ratio=0.95).apply(scores, positive)
    margin, _ = NegativeFilter(relative_margin=0.05).apply(scores, positive)
    np.testing.assert_array_equal(ratio, margin)
    for row in np.flatnonzero(positive > 0):
        assert (scores[row][ratio[row]] <= 0.95 * positive[row] + 1e-6).all()


def test_max_score_and_min_score_bound_the_candidates():
    assert _kept(NegativeFilter(max_score=0.8, min_score=0.3)) == [0.75, 0.5]


def test_each_rule_counts_only_the_candidates_it_removed_itself():
    scores = np.array([[0.95, 0.85, 0.75, 0.5, 0.1, -np.inf]], dtype=np.float32)
    _, removed = NegativeFilter(absolute_margin=0.1, max_score=0.8, min_score=0.3).apply(scores, POSITIVE)
    # absolute_margin takes 0.95 and 0.85 first, so max_score finds nothing left to remove; -inf is never counted.
    assert removed == {"absolute_margin": 2, "max_score": 0, "min_score": 1}


@pytest.mark.parametrize(
    ("a", "b"),
    [("Paris, France.", "paris   france"), ("ＡＢＣ", "abc"), ("Straße", "STRASSE"), ("東京タワー。", "東京タワー")],
)
def test_normalize_text_folds_case_width_punctuation_and_spacing(a, b):
    assert normalize_text(a) == normalize_text(b)


def test_normalize_text_keeps_different_words_apart():
    assert normalize_text("Berlin is large") != normalize_text("Berlin is small")


def test_exclusions_catch_positives_their_duplicates_the_query_and_repeats_keeping_the_best_ranked():
    corpus = ["Doc A.", "doc a", "Doc B", "DOC B!", "Doc C", "what is a"]
    keys = duplicate_keys(corpus)
    candidates = np.array([[0, 1, 2, 3, 4, 5, -1]])
    positives = np.array([[0, -1]])
    masks = exclusion_masks(candidates, positives, keys, duplicate_keys(["What is A?"]))
    assert masks["positive"][0].tolist() == [True, False, False, False, False, False, False]
    # 1 normalizes to the positive, 3 repeats the better-ranked 2, 5 is the query itself.
    assert masks["duplicate"][0].tolist() == [False, True, False, True, False, True, False]
    assert masks["missing"][0].tolist() == [False] * 6 + [True]
