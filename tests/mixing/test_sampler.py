from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from scipy.stats import chisquare
from sentence_transformers.base.sampler import DefaultBatchSampler
from torch.utils.data import ConcatDataset

from st_retrofit.mixing import TemperatureBatchSampler, mixture_probabilities


def pairs(prefix: str, n: int, **extra) -> Dataset:
    data = {"query": [f"{prefix} query {i}" for i in range(n)], "document": [f"{prefix} doc {i}" for i in range(n)]}
    data.update({k: [v(i) for i in range(n)] for k, v in extra.items()})
    return Dataset.from_dict(data)


def make_sampler(splits: dict[str, Dataset], batch_size=4, drop_last=True, seed=0, **settings):
    data = DatasetDict(splits)
    children = [DefaultBatchSampler(d, batch_size=batch_size, drop_last=drop_last) for d in data.values()]
    settings.setdefault("dataset_names", list(data))
    sampler = TemperatureBatchSampler(ConcatDataset(list(data.values())), children, seed=seed, **settings)
    return sampler, ConcatDataset(list(data.values()))


def epoch_batches(sampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def group_of(index: int, bounds: dict[str, range]) -> str:
    return next(name for name, rows in bounds.items() if index in rows)


SIZES = {"a": 4000, "b": 1000, "c": 250}


def three_datasets():
    return {name: pairs(name, n) for name, n in SIZES.items()}


def bounds_of(splits):
    out, start = {}, 0
    for name, split in splits.items():
        out[name] = range(start, start + len(split))
        start += len(split)
    return out


def test_mixture_probabilities_follow_size_to_the_alpha():
    p = mixture_probabilities(SIZES, alpha=0.5)
    expected = np.sqrt(list(SIZES.values()))
    np.testing.assert_allclose(list(p.values()), expected / expected.sum())
    assert mixture_probabilities(SIZES, alpha=0.0) == pytest.approx({k: 1 / 3 for k in SIZES})
    assert mixture_probabilities(SIZES, alpha=1.0)["a"] == pytest.approx(4000 / 5250)
    # A cap limits how much of the size counts; a weight multiplies the mass.
    assert mixture_probabilities(SIZES, 1.0, caps={"a": 1000})["a"] == pytest.approx(1000 / 2250)
    assert mixture_probabilities(SIZES, 0.0, weights={"c": 2.0})["c"] == pytest.approx(0.5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_batch_groups_follow_the_configured_distribution(alpha):
    splits = three_datasets()
    sampler, _ = make_sampler(splits, alpha=alpha, seed=123)
    bounds = bounds_of(splits)
    counts = Counter()
    epochs = 5
    for epoch in range(epochs):
        for batch in epoch_batches(sampler, epoch):
            counts[group_of(batch[0], bounds)] += 1
    observed = np.array([counts[name] for name in SIZES])
    p = np.array(list(mixture_probabilities(SIZES, alpha).values()))
    assert observed.sum() == epochs * len(sampler)
    statistic, p_value = chisquare(observed, p * observed.sum())
    assert p_value > 0.05, (observed, p * observed.sum())
    # Stratified draws: within one batch of the expectation in every epoch, not only on average.
    for epoch in range(3):
        quotas = sampler.quotas(epoch)
        assert np.all(np.abs(quotas - p * len(sampler)) < 1)


def test_rare_group_gets_its_expected_share_over_epochs():
    sampler, _ = make_sampler({"big": pairs("big", 2000), "rare": pairs("rare", 8)}, alpha=1.0, num_batches=50)
    expected = 50 * 8 / 2008  # 0.2: well under one batch per epoch
    drawn = [int(sampler.quotas(e)[1]) for e in range(400)]
    assert 0 < sum(drawn) < 400
    assert np.mean(drawn) == pytest.approx(expected, rel=0.25)


def test_weights_and_caps_change_probabilities_and_epoch_length():
    splits = three_datasets()
    sampler, _ = make_sampler(splits, alpha=1.0, caps={"a": 500}, weights={"c": 2.0})
    described = {g["group"]: g for g in sampler.describe()}
    mass = {"a": 500, "b": 1000, "c": 2 * 250}
    assert described["a"]["probability"] == pytest.approx(mass["a"] / sum(mass.values()))
    assert len(sampler) == (500 + 1000 + 250) // 4
    assert make_sampler(splits, num_batches=7)[0].__len__() == 7


def test_epoch_is_deterministic_for_a_seed_and_differs_across_epochs_and_seeds():
    a, _ = make_sampler(three_datasets(), seed=5)
    b, _ = make_sampler(three_datasets(), seed=5)
    c, _ = make_sampler(three_datasets(), seed=6)
    assert epoch_batches(a, 0) == epoch_batches(b, 0)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert epoch_batches(a, 0) != epoch_batches(c, 0)


def test_resumed_epoch_yields_the_same_remaining_batches():
    splits = three_datasets()
    uninterrupted, _ = make_sampler(splits, seed=9)
    full = {epoch: epoch_batches(uninterrupted, epoch) for epoch in range(3)}
    # A new process (new sampler) resumes in epoch 2 after 17 batches, as the trainer does: set_epoch, then skip.
    resumed, _ = make_sampler(splits, seed=9)
    resumed.set_epoch(2)
    assert list(resumed)[17:] == full[2][17:]
    assert epoch_batches(resumed, 2) == full[2]  # epoch 2 does not depend on having iterated epochs 0 and 1


def test_every_batch_has_one_group_and_exactly_batch_size_rows():
    splits = {
        "web": pairs("web", 300, language=lambda i: ["en", "de", "fr"][i % 3]),
        "synthetic": pairs("syn", 120, language=lambda i: ["de", "ja"][i % 2]),
    }
    sampler, data = make_sampler(splits, batch_size=8, group_by="language")
    names = {g["group"] for g in sampler.describe()}
    assert names == {"en", "de", "fr", "ja"}  # "de" spans both datasets
    batches = epoch_batches(sampler, 0)
    assert len(batches) == len(sampler)
    spans_datasets = False
    for batch in batches:
        assert len(batch) == 8
        rows = [data[i] for i in batch]
        assert len({row["language"] for row in rows}) == 1
        spans_datasets |= len({row["query"].split()[0] for row in rows}) > 1
    assert spans_datasets

    by_pair, data = make_sampler(splits, batch_size=8, group_by=["dataset", "language"])
    assert {g["group"] for g in by_pair.describe()} == {"web/en", "web/de", "web/fr", "synthetic/de", "synthetic/ja"}
    for batch in epoch_batches(by_pair, 0):
        assert len({(data[i]["query"].split()[0], data[i]["language"]) for i in batch}) == 1


def test_no_text_repeats_in_a_batch_across_columns():
    # Row i's document is row i+1's query, and a few texts repeat within a column.
    n = 200
    docs = [f"text {i + 1}" for i in range(n)]
    data = {"query": [f"text {i}" for i in range(n)], "document": docs, "language": ["en"] * n}
    data["document"][::7] = ["a repeated document"] * len(data["document"][::7])
    sampler, dataset = make_sampler({"x": Dataset.from_dict(data)}, batch_size=16)
    batches = [b for e in range(3) for b in epoch_batches(sampler, e)]
    assert batches
    for batch in batches:
        texts = [dataset[i][c] for i in batch for c in ("query", "document")]
        assert len(texts) == len(set(texts))
        assert len(batch) == 16
    # The language column is metadata, not text; without that exclusion every batch would hold one row.


def test_small_group_is_upsampled_without_repeating_a_row_in_a_batch():
    sampler, _ = make_sampler({"big": pairs("big", 400), "small": pairs("small", 10)}, batch_size=4, alpha=0.0)
    small = range(400, 410)
    seen = Counter()
    for batch in epoch_batches(sampler, 0):
        if batch[0] in small:
            assert len(set(batch)) == 4
            seen.update(batch)
    assert sum(seen.values()) > 10 * 4  # alpha 0: far more draws than the group has rows
    assert set(seen) == set(small)


def test_group_too_small_for_a_batch_is_dropped_with_drop_last(caplog):
    sampler, _ = make_sampler({"big": pairs("big", 400), "tiny": pairs("tiny", 3)}, batch_size=4, alpha=0.0)
    batches = epoch_batches(sampler, 0)
    assert all(b[0] < 400 for b in batches)
    assert "too few distinct texts" in caplog.text
    short, _ = make_sampler({"big": pairs("big", 400), "tiny": pairs("tiny", 3)}, batch_size=4, drop_last=False)
    assert any(len(b) == 3 for e in range(5) for b in epoch_batches(short, e))


def test_bad_settings_name_the_setting():
    with pytest.raises(match="alpha"):
        TemperatureBatchSampler.configure(alpha=1.5)
    with pytest.raises(match=r"caps\.a"):
        TemperatureBatchSampler.configure(caps={"a": 0})
    with pytest.raises(TypeError, match="unknown settings"):
        TemperatureBatchSampler.configure(temperature=2.0)
    with pytest.raises(match=r"weights: no group named \['d'\]; the groups are \['a', 'b', 'c'\]"):
        make_sampler(three_datasets(), weights={"d": 1.0})
    with pytest.raises(match="dataset 'a' has no column 'task'"):
        make_sampler(three_datasets(), group_by="task")


def varied_lengths(prefix: str, n: int, seed: int) -> Dataset:
    """Documents of 1 to 60 words, in random order."""
    rng = np.random.default_rng(seed)
    words = rng.integers(1, 61, size=n)
    return Dataset.from_dict({
        "query": [f"{prefix} query {i}" for i in range(n)],
        "document": [" ".join(f"w{i}" for _ in range(k)) for i, k in enumerate(words)],
    })  # fmt: skip


def padding_share(batches, lengths) -> float:
    """The share of a batch's padded area that is padding, over all batches (each batch pads to its longest)."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def test_length_buckets_batch_similar_lengths_and_still_visit_every_row_once_per_pass():
    splits = {"a": varied_lengths("a", 640, seed=0), "b": varied_lengths("b", 320, seed=1)}
    lengths = [len(d) for split in splits.values() for d in split["document"]]
    plain, _ = make_sampler(splits, batch_size=8, alpha=1.0, seed=3)
    bucketed, _ = make_sampler(splits, batch_size=8, alpha=1.0, seed=3, length_buckets=10)
    plain_batches, bucketed_batches = epoch_batches(plain, 0), epoch_batches(bucketed, 0)
    assert padding_share(bucketed_batches, lengths) < padding_share(plain_batches, lengths) / 3
    # The batches are still one group each, and with alpha 1 one epoch is one pass: every row exactly once.
    assert sorted(i for b in bucketed_batches for i in b) == list(range(960))
    assert all(len({i < 640 for i in b}) == 1 for b in bucketed_batches)
    # Lengths do not rise through the epoch: the window's batches are shuffled.
    means = [np.mean([lengths[i] for i in b]) for b in bucketed_batches[:10]]
    assert means != sorted(means)
    again, _ = make_sampler(splits, batch_size=8, alpha=1.0, seed=3, length_buckets=10)
    assert epoch_batches(again, 1) == epoch_batches(bucketed, 1)  # a pure function of seed and epoch
    assert bucketed.get_config_dict()["length_buckets"] == 10


def test_built_from_the_recipe_section_the_sampler_takes_each_shared_setting_by_name():
    from st_retrofit.mixing.config import MixingConfig

    config = MixingConfig(alpha=0.3, weights={"a": 2.0}, caps={"b": 5}, num_batches=7, no_duplicates=False,
                          length_buckets=2)  # fmt: skip
    bound = TemperatureBatchSampler.from_config(config, dataset_names=["a", "b"])
    assert bound.keywords == {"alpha": 0.3, "weights": {"a": 2.0}, "caps": {"b": 5}, "group_by": ["dataset"],
                              "num_batches": 7, "no_duplicates": False, "length_buckets": 2,
                              "dataset_names": ["a", "b"]}  # fmt: skip
