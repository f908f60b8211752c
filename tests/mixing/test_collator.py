from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from st_retrofit.mixing import RetrofitDataCollator, task_id

POOL = [f"candidate number {j}" for j in range(10)]
SCORES = [0.9 - 0.05 * j for j in range(10)]


def pool_row(i: int, pool=POOL, scores=SCORES, **extra) -> dict:
    return {
        "query": f"question {i}",
        "document": f"answer {i}",
        "negatives": list(pool),
        "negative_ids": list(range(len(pool))),
        "label": [0.95, *scores],
        **extra,
    }


@pytest.fixture
def collate(tiny_model):
    def make(**settings) -> RetrofitDataCollator:
        settings.setdefault("use_model_prompts", False)
        return RetrofitDataCollator(tiny_model.preprocess, **settings)

    return make


def decoded(tiny_model, batch: dict, column: str) -> list[str]:
    return tiny_model.tokenizer.batch_decode(batch[f"{column}_input_ids"], skip_special_tokens=True)


def drawn_negatives(tiny_model, batch: dict, k: int) -> list[list[str]]:
    columns = [decoded(tiny_model, batch, f"negative_{j + 1}") for j in range(k)]
    return [list(row) for row in zip(*columns, strict=True)]


def test_draws_k_negatives_from_the_rank_range_with_aligned_teacher_scores(collate, tiny_model):
    collator = collate(num_negatives=3, range_min=2, range_max=6)
    batch = collator([pool_row(i) for i in range(4)])
    assert [k for k in batch if k.endswith("_input_ids")] == [
        "query_input_ids",
        "document_input_ids",
        "negative_1_input_ids",
        "negative_2_input_ids",
        "negative_3_input_ids",
    ]
    scores = batch["label"]["teacher_scores"]
    assert scores.shape == (4, 4) and torch.all(scores[:, 0] == 0.95)
    for row, negatives in enumerate(drawn_negatives(tiny_model, batch, 3)):
        ranks = [int(text.split()[-1]) for text in negatives]
        assert all(2 <= r < 6 for r in ranks) and len(set(ranks)) == 3
        np.testing.assert_allclose(scores[row, 1:].numpy(), [SCORES[r] for r in ranks], rtol=1e-6)


def test_each_epoch_draws_afresh_and_an_epoch_repeats_exactly(collate, tiny_model):
    rows = [pool_row(i) for i in range(4)]
    collator = collate(num_negatives=2, seed=1)
    first = drawn_negatives(tiny_model, collator(rows), 2)
    assert drawn_negatives(tiny_model, collator(rows), 2) == first  # same epoch, same draw
    collator.set_epoch(1)
    assert drawn_negatives(tiny_model, collator(rows), 2) != first
    other = collate(num_negatives=2, seed=1)
    other.set_epoch(1)
    assert drawn_negatives(tiny_model, other(rows), 2) == drawn_negatives(tiny_model, collator(rows), 2)


def test_top_sampling_takes_the_best_ranks_in_range(collate, tiny_model):
    batch = collate(num_negatives=2, range_min=1, sampling="top")([pool_row(0)])
    assert drawn_negatives(tiny_model, batch, 2) == [["candidate number 1", "candidate number 2"]]


def test_teacher_weighted_sampling_prefers_higher_scores(collate, tiny_model):
    uniform, weighted = Counter(), Counter()
    for epoch in range(60):
        for counter, sampling in ((uniform, "random"), (weighted, "teacher")):
            collator = collate(num_negatives=1, sampling=sampling, sampling_temperature=0.05)
            collator.set_epoch(epoch)
            counter.update(int(t.split()[-1]) for t in drawn_negatives(tiny_model, collator([pool_row(0)]), 1)[0])
    # exp((s0 - s9) / 0.05) = e^9: rank 0 dominates rank 9 by far under teacher weighting.
    assert weighted[0] > 3 * max(weighted[9], 1)
    assert weighted[0] + weighted[1] > uniform[0] + uniform[1]


def test_batch_anchors_and_positives_are_never_drawn_as_negatives(collate, tiny_model):
    rows = [
        pool_row(i, pool=["answer 1", "question 0", "plain a", "plain b"], scores=[0.9, 0.8, 0.7, 0.6]) for i in (0, 1)
    ]
    for epoch in range(10):
        collator = collate(num_negatives=2)
        collator.set_epoch(epoch)
        negatives = drawn_negatives(tiny_model, collator(rows), 2)
        assert all(sorted(n) == ["plain a", "plain b"] for n in negatives)


def test_rows_prefer_negatives_no_other_row_drew(collate, tiny_model):
    rows = [pool_row(i) for i in range(5)]  # one shared pool of 10, two draws each: 10 distinct texts exist
    negatives = drawn_negatives(tiny_model, collate(num_negatives=2)(rows), 2)
    flat = [t for row in negatives for t in row]
    assert len(set(flat)) == len(flat)


def test_short_pools_top_up_outside_the_range_then_repeat_then_borrow(collate, tiny_model):
    rows = [
        pool_row(0, pool=["p0 a", "p0 b", "p0 c"], scores=[0.8, 0.7, 0.6]),  # range [2, 3) holds one
        pool_row(1, pool=["p1 a"], scores=[0.5]),  # one candidate in all
        pool_row(2, pool=[], scores=[]),  # nothing: borrows
    ]
    collator = collate(num_negatives=2, range_min=2, range_max=3)
    batch = collator(rows)
    negatives = drawn_negatives(tiny_model, batch, 2)
    assert negatives[0][0] in {"p0 a", "p0 b"} and negatives[0][1] == "p0 c"  # rank 2 first, then topped up
    assert negatives[1] == ["p1 a", "p1 a"]
    assert set(negatives[2]) <= {"p0 a", "p0 b", "p0 c", "p1 a"}
    scores = batch["label"]["teacher_scores"]
    assert torch.all(torch.isneginf(scores[2, 1:]))
    assert collator.stats["rows_outside_range"] == 2  # rows 0 and 1
    assert collator.stats["rows_short"] == 2  # rows 1 and 2
    assert collator.stats["negatives_repeated"] == 1
    assert collator.stats["negatives_borrowed"] == 2


def test_a_batch_without_any_usable_negative_trains_on_in_batch_negatives(collate, tiny_model, caplog):
    from st_retrofit.losses import RetrofitInfoNCELoss

    collator = collate(num_negatives=2)
    # Empty pools, and pools holding only texts that are positives in the batch (a corpus that fits in a batch).
    rows = [pool_row(0, pool=[], scores=[]), pool_row(1, pool=["answer 0", "answer 2"], scores=[0.8, 0.7]),
            pool_row(2, pool=["answer 1"], scores=[0.8])]  # fmt: skip
    batch = collator(rows)
    assert [k for k in batch if k.endswith("_input_ids")] == ["query_input_ids", "document_input_ids"]
    assert batch["label"]["teacher_scores"].shape == (3, 1)
    assert collator.stats["batches_without_negatives"] == 1 and "in-batch negatives alone" in caplog.text
    features = [{k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in ("query", "document")]
    value = RetrofitInfoNCELoss(tiny_model, distill_weight=0.5)(features, batch["label"])
    total = sum(value.values()) if isinstance(value, dict) else value
    assert torch.isfinite(total) and total > 0


def test_task_ids_come_from_the_task_column_or_the_dataset_name(collate):
    collator = collate(num_negatives=1)
    batch = collator([pool_row(0, task="qa"), pool_row(1, task="qa"), pool_row(2, task="sts")])
    assert batch["label"]["task_ids"].tolist() == [task_id("qa"), task_id("qa"), task_id("sts")]
    assert task_id("qa") != task_id("sts") and task_id("qa") == task_id("qa")
    named = collator([{**pool_row(0), "dataset_name": "msmarco"}])
    assert named["dataset_name"] == "msmarco"
    assert named["label"]["task_ids"].tolist() == [task_id("msmarco")]
    assert "task_ids" not in collator([pool_row(0)])["label"]


def test_label_modes(collate):
    rows = [pool_row(0, task="qa")]
    assert isinstance(collate(num_negatives=2, labels="teacher_scores")(rows)["label"], torch.Tensor)
    assert "label" not in collate(num_negatives=2, labels="none")(rows)
    assert collate(num_negatives=0)(rows)["label"]["teacher_scores"].shape == (1, 1)  # pool dropped
    plain = {"query": "q", "document": "d"}
    assert "label" not in collate()([plain])


def test_fixed_negative_columns_pass_through_with_their_scores(collate, tiny_model):
    row = {
        "query": "q one",
        "document": "d one",
        "negative_1": "n one",
        "negative_2": "n two",
        "label": [0.9, 0.5, 0.4],
    }
    batch = collate()([row])
    assert decoded(tiny_model, batch, "negative_2") == ["n two"]
    assert batch["label"]["teacher_scores"].tolist() == [pytest.approx([0.9, 0.5, 0.4])]


def test_task_prompts_apply_to_the_query_side_and_model_prompts_to_the_rest(tiny_model):
    tiny_model.prompts = {"query": "query: ", "document": "passage: "}
    collator = RetrofitDataCollator(
        tiny_model.preprocess, num_negatives=1, prompts={"qa": "find the answer: ", "*": {"document": "doc: "}}
    )
    qa = collator([pool_row(0, task="qa")])
    assert decoded(tiny_model, qa, "query")[0].startswith("find the answer")
    assert decoded(tiny_model, qa, "document")[0].startswith("passage")
    assert decoded(tiny_model, qa, "negative_1")[0].startswith("passage")
    assert "query_prompt_length" in qa
    other = collator([pool_row(0, task="sts")])
    assert decoded(tiny_model, other, "query")[0].startswith("query")  # "*" has no query prompt: the model's
    assert decoded(tiny_model, other, "document")[0].startswith("doc")
    assert collator.model_prompts() == {"qa-query": "find the answer: ", "document": "doc: "}

    both = RetrofitDataCollator(tiny_model.preprocess, prompts="same: ", prompt_side="both", use_model_prompts=False)
    batch = both([{"query": "a", "document": "b"}])
    assert decoded(tiny_model, batch, "document")[0].startswith("same")
    assert both.model_prompts() == {"query": "same: ", "document": "same: "}

    documents = RetrofitDataCollator(tiny_model.preprocess, prompts={"qa": "doc side: "}, prompt_side="document")
    batch = documents([{"query": "a", "document": "b", "task": "qa"}])
    assert decoded(tiny_model, batch, "query")[0].startswith("query")  # the model's own
    assert decoded(tiny_model, batch, "document")[0].startswith("doc side")
    assert documents.model_prompts() == {"qa-document": "doc side: "}


def test_a_batch_mixing_tasks_gets_each_rows_prompt(collate, tiny_model):
    collator = collate(num_negatives=1, prompts={"qa": "qa: ", "sts": "sts: "})
    batch = collator([pool_row(0, task="qa"), pool_row(1, task="sts")])
    queries = decoded(tiny_model, batch, "query")
    assert queries[0].startswith("qa") and queries[1].startswith("sts"), queries


def test_columns_the_stock_collator_mishandles_are_refused_by_name(collate):
    collator = collate(num_negatives=1)
    with pytest.raises(ValueError, match="column 'extra' holds a list"):
        collator([{"query": "q", "document": "d", "extra": ["a", "b"]}])
    with pytest.raises(ValueError, match=r"rows carry \['score'\] besides the label column 'label'"):
        collator([{"query": "q", "document": "d", "label": 1.0, "score": 0.5}])
    with pytest.raises(ValueError, match="column 'rank' holds int values"):
        collator([{"query": "q", "document": "d", "rank": 3}])
    with pytest.raises(ValueError, match="no text in column 'document'"):
        collator([{"query": "q", "document": None}])
    with pytest.raises(ValueError, match="must hold 1 \\+ len\\('negatives'\\) = 11 teacher scores"):
        collator([{**pool_row(0), "label": [0.9, 0.8]}])
    # Metadata columns are not texts, and the samplers' duplicate checks skip them too.
    batch = collator([pool_row(0, language="de", template="title-body", task="qa")])
    assert not any(k.startswith(("language", "template", "task_")) for k in batch)
    assert {"task", "language", "negative_ids"} <= set(collator.valid_label_columns)


def test_bad_settings_name_the_setting(tiny_model):
    with pytest.raises(match="range_max"):
        RetrofitDataCollator(tiny_model.preprocess, range_min=4, range_max=2)
    with pytest.raises(match="sampling"):
        RetrofitDataCollator(tiny_model.preprocess, sampling="hardest")
    with pytest.raises(match=r"prompts\.qa"):
        RetrofitDataCollator(tiny_model.preprocess, prompts={"qa": 3})


def test_built_from_the_recipe_section_the_collator_takes_each_shared_setting_by_name(tiny_model):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from st_retrofit.losses import RetrofitInfoNCELoss
    from st_retrofit.mixing.config import MixingConfig

    config = MixingConfig(num_negatives=2, range_min=1, range_max=5, sampling="top", task_column=None,
                          prompt_side="both", prompts="search ")  # fmt: skip
    collator = RetrofitDataCollator.from_config(tiny_model.preprocess, config, loss=RetrofitInfoNCELoss, seed=7)
    settings = ("num_negatives", "range_min", "range_max", "sampling", "prompt_side", "prompts", "task_column")
    assert {name: getattr(collator, name) for name in settings} == {name: getattr(config, name) for name in settings}
    assert (collator.labels, collator.seed) == ("dict", 7)  # auto: what our loss reads
    # The draw follows the section: top sampling from ranks [1, 5) gives candidates 1 and 2, prompted ("both").
    batch = collator([pool_row(0)])
    assert drawn_negatives(tiny_model, batch, 2) == [["search " + POOL[1], "search " + POOL[2]]]
    stock = RetrofitDataCollator.from_config(tiny_model.preprocess, config, loss=MultipleNegativesRankingLoss)
    assert stock.labels == "teacher_scores"  # a loss that declares nothing gets the teacher's scores
    assert RetrofitDataCollator.from_config(tiny_model.preprocess, config, num_negatives=4).num_negatives == 4
