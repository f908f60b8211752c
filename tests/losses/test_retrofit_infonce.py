from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)

from st_retrofit.losses import CachedRetrofitInfoNCELoss, RetrofitInfoNCELoss

COLUMNS = {
    "anchor": ["When was Mikaro founded?", "Сколько людей живёт в Дабе?", "ルセ川沿いの町はどこですか？",
               "Welche Stadt liegt am Fluss Sadu?", "Which town lives from fishing?", "¿Cuándo fue fundada Miro?"],
    "positive": ["Mikaro was founded in 1723.", "В Дабе живут 12 400 человек.", "ダベはルセ川沿いの町です。",
                 "Kato liegt am Fluss Sadu.", "Sodu lives from fishing.", "Miro fue fundada en 1530."],
    "negative": ["Dabe was founded in 1790.", "В Миро живут 8 000 человек.", "ミロは林業の町です。",
                 "Dabe liegt am Fluss Luse.", "Mikaro lives from mining.", "Kato fue fundada en 1812."],
}  # fmt: skip
TEACHER = torch.tensor([[0.9, 0.5], [0.8, 0.79], [0.7, 0.2], [0.85, 0.84], [0.6, 0.3], [0.9, 0.88]])


def features(model, columns=("anchor", "positive", "negative")):
    return [model.preprocess(COLUMNS[c]) for c in columns]


def loss_and_grads(loss, model, labels=None, columns=("anchor", "positive", "negative")):
    model.zero_grad()
    value = loss(features(model, columns), labels)
    total = sum(value.values()) if isinstance(value, dict) else value
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.detach(), grads


def assert_same(a, b, atol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=atol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=1e-4, msg=name)


@pytest.fixture
def model(tiny_model):
    tiny_model.eval()  # no dropout, so that two losses see the same embeddings
    return tiny_model


@pytest.mark.parametrize("columns", [("anchor", "positive"), ("anchor", "positive", "negative")])
def test_with_extras_off_equals_mnrl(model, columns):
    ours = loss_and_grads(RetrofitInfoNCELoss(model), model, columns=columns)
    reference = loss_and_grads(MultipleNegativesRankingLoss(model), model, columns=columns)
    assert_same(ours, reference)


def test_query_negatives_equal_mnrl_query_to_query(model):
    ours = loss_and_grads(RetrofitInfoNCELoss(model, scale=30.0, query_negatives=True), model)
    mnrl = MultipleNegativesRankingLoss(model, scale=30.0, directions=("query_to_doc", "query_to_query"))
    assert_same(ours, loss_and_grads(mnrl, model))


# Hand-built embeddings: 3 rows, one hard negative each; cosine = dot product of these unit vectors.
def unit(*values):
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


ANCHORS = unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
POSITIVES = unit([0.8, 0.6, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.9])
NEGATIVES = unit([0.79, 0.0, 0.6], [0.3, 0.2, 0.9], [0.0, 0.4, 0.3])


def logits_and_weights(loss, labels=None):
    embeddings = [ANCHORS, POSITIVES, NEGATIVES]
    teacher, tasks = loss._split_labels(labels, embeddings)
    candidates = loss.gather_candidates(embeddings, tasks)
    return loss.scores(ANCHORS, torch.arange(3), candidates, teacher, tasks)


def masked(log_weight):
    return {tuple(x) for x in torch.isinf(log_weight).nonzero().tolist()}


def test_absolute_margin_masks_candidates_scoring_above_positive_minus_margin():
    # Row 0: positive 0.8; its hard negative (column 3) scores 0.79 > 0.8 - 0.05, so it is masked.
    _, log_weight, positive, _ = logits_and_weights(RetrofitInfoNCELoss(None, false_negative_margin=0.05))
    assert (0, 3) in masked(log_weight)
    assert not any((row, int(positive[row])) in masked(log_weight) for row in range(3))
    sims = ANCHORS @ torch.cat([POSITIVES, NEGATIVES]).T
    expected = {(r, c) for r in range(3) for c in range(6) if c != r and sims[r, c] > sims[r, r] - 0.05}
    assert masked(log_weight) == expected


def test_relative_margin_is_correct_for_negative_positive_scores():
    anchors, positives, negatives = unit([1.0, 0.0]), unit([-0.5, 0.866]), unit([-0.55, 0.835])
    loss = RetrofitInfoNCELoss(None, false_negative_margin=0.1, margin_strategy="relative")
    embeddings = [anchors, positives, negatives]
    candidates = loss.gather_candidates(embeddings)
    _, log_weight, _, _ = loss.scores(anchors, torch.arange(1), candidates)
    # positive -0.5: threshold -0.5 - 0.05 = -0.55; the negative scores -0.55 (a tie, kept).
    assert not masked(log_weight)
    loss.false_negative_margin = 0.2  # threshold -0.6: now the negative is above it
    _, log_weight, _, _ = loss.scores(anchors, torch.arange(1), candidates)
    assert masked(log_weight) == {(0, 1)}


def test_teacher_mask_drops_own_hard_negatives_close_to_the_positive():
    teacher = torch.tensor([[0.9, 0.5], [0.8, 0.79], [0.7, 0.68]])
    _, log_weight, _, own = logits_and_weights(RetrofitInfoNCELoss(None, teacher_margin=0.05), teacher)
    assert masked(log_weight) == {(1, int(own[1, 1])), (2, int(own[2, 1]))}


def test_teacher_weight_ramps_down_as_the_gap_closes():
    teacher = torch.tensor([[0.9, 0.5], [0.8, 0.78], [0.7, 0.75]])
    loss = RetrofitInfoNCELoss(None, teacher_margin=0.1, teacher_mode="weight")
    _, log_weight, _, own = logits_and_weights(loss, teacher)
    weights = log_weight[torch.arange(3), own[:, 1]].exp()
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.2, 0.0]), atol=1e-5, rtol=0)


def test_task_ids_mask_candidates_from_other_tasks():
    labels = {"task_ids": torch.tensor([0, 0, 1])}
    _, log_weight, _, _ = logits_and_weights(RetrofitInfoNCELoss(None, query_negatives=True), labels)
    # Columns: positives 0-2, negatives 3-5, anchors 6-8; row 2 (task 1) sees only its own candidates.
    expected = {(0, 2), (0, 5), (0, 8), (1, 2), (1, 5), (1, 8), (2, 0), (2, 1), (2, 3), (2, 4), (2, 6), (2, 7)}
    assert masked(log_weight) == expected  # self-similarities (0, 6), (1, 7), (2, 8) are -inf in the logits


def test_masked_candidates_leave_the_partition_function():
    loss = RetrofitInfoNCELoss(None, false_negative_margin=0.05, scale=10.0)
    logits, log_weight, positive, _ = logits_and_weights(loss)
    value = loss.compute_loss_from_embeddings([ANCHORS, POSITIVES, NEGATIVES])
    keep = ~torch.isinf(log_weight)
    manual = torch.stack([torch.logsumexp(logits[r][keep[r]], 0) - logits[r, positive[r]] for r in range(3)]).mean()
    assert value.item() == pytest.approx(manual.item(), abs=1e-6)


def test_distillation_is_the_kl_from_teacher_to_student_over_own_candidates():
    teacher = torch.tensor([[0.9, 0.5], [0.8, 0.7], [0.7, 0.2]])
    loss = RetrofitInfoNCELoss(None, scale=10.0, distill_weight=0.5, distill_temperature=0.1)
    parts = loss.compute_loss_from_embeddings([ANCHORS, POSITIVES, NEGATIVES], teacher)
    assert set(parts) == {"infonce", "distill"}
    student = torch.stack([(ANCHORS * POSITIVES).sum(1), (ANCHORS * NEGATIVES).sum(1)], dim=1) * 10.0
    target = F.softmax(teacher / 0.1, dim=1)
    expected = 0.5 * (target * (target.log() - F.log_softmax(student, dim=1))).sum(1).mean()
    assert parts["distill"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_distillation_from_a_teacher_that_scores_like_the_student_is_zero_by_default():
    # The teacher's scores are cosines like the student's; by default both are read at the student's temperature,
    # so a teacher that is the base model itself adds nothing at step 0 (at temperature 1.0 its distribution would
    # be nearly uniform and distilling it would pull the negatives up to the positive).
    own = torch.stack([(ANCHORS * POSITIVES).sum(1), (ANCHORS * NEGATIVES).sum(1)], dim=1)
    loss = RetrofitInfoNCELoss(None, scale=100.0, distill_weight=1.0)
    assert loss.compute_loss_from_embeddings([ANCHORS, POSITIVES, NEGATIVES], own)["distill"].item() == pytest.approx(
        0.0, abs=1e-6
    )
    flat = RetrofitInfoNCELoss(None, scale=100.0, distill_weight=1.0, distill_temperature=1.0)
    assert flat.compute_loss_from_embeddings([ANCHORS, POSITIVES, NEGATIVES], own)["distill"].item() > 0.1


def test_a_margin_that_masks_most_negatives_is_warned_about_once(caplog):
    # Compressed scores, as multilingual-e5 gives: every pair between 0.80 and 0.90.
    anchors = unit([1.0, 0.0, 0.0], [1.0, 0.05, 0.0], [1.0, 0.0, 0.05])
    positives = unit([0.9, 0.45, 0.0], [0.9, 0.4, 0.1], [0.9, 0.1, 0.4])
    negatives = unit([0.85, 0.5, 0.1], [0.85, 0.1, 0.5], [0.85, 0.5, 0.2])
    with caplog.at_level("WARNING", logger="st_retrofit.losses.retrofit_infonce"):
        wide = RetrofitInfoNCELoss(None, scale=100.0, false_negative_margin=0.1)
        wide.compute_loss_from_embeddings([anchors, positives, negatives])
        wide.compute_loss_from_embeddings([anchors, positives, negatives])
        RetrofitInfoNCELoss(None, scale=100.0, false_negative_margin=0.001).compute_loss_from_embeddings(
            [anchors, positives, negatives]
        )
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "false_negative_margin=0.1 (absolute) masks 100% of the negatives" in warnings[0]


def test_missing_teacher_scores_are_reported():
    with pytest.raises(ValueError, match="teacher scores"):
        RetrofitInfoNCELoss(None, teacher_margin=0.1).compute_loss_from_embeddings([ANCHORS, POSITIVES, NEGATIVES])
    with pytest.raises(ValueError, match=r"shape \(batch, 1 \+ num_negatives\) = \(3, 2\)"):
        RetrofitInfoNCELoss(None, distill_weight=1.0).compute_loss_from_embeddings(
            [ANCHORS, POSITIVES, NEGATIVES], torch.zeros(3, 3)
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 0}, "scale must be > 0"),
        ({"margin_strategy": "percent"}, "Invalid margin_strategy"),
        ({"teacher_mode": "soft"}, "Invalid teacher_mode"),
        ({"teacher_margin": 0.0, "teacher_mode": "weight"}, "teacher_margin must be"),
        ({"distill_weight": -1}, "distill_weight must be >= 0"),
        ({"learnable_scale": True, "scale": 200.0}, "must not exceed max_scale"),
    ],
)
def test_invalid_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetrofitInfoNCELoss(None, **kwargs)


def test_learnable_scale_is_a_trained_parameter(model):
    loss = RetrofitInfoNCELoss(model, scale=20.0, learnable_scale=True)
    assert "log_scale" in dict(loss.named_parameters(recurse=False))
    loss(features(model), None).backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.abs() > 0
    assert float(loss.scale) == pytest.approx(20.0)


ALL_EXTRAS = {
    "scale": 25.0,
    "query_negatives": True,
    "false_negative_margin": 0.2,
    "margin_strategy": "relative",
    "teacher_margin": 0.05,
    "teacher_mode": "weight",
    "distill_weight": 0.3,
}


@pytest.mark.parametrize("mini_batch_size", [1, 4, 32])
def test_cached_twin_equals_the_plain_loss(model, mini_batch_size):
    plain = RetrofitInfoNCELoss(model, return_components=False, **ALL_EXTRAS)
    cached = CachedRetrofitInfoNCELoss(model, mini_batch_size=mini_batch_size, **ALL_EXTRAS)
    assert_same(loss_and_grads(cached, model, TEACHER), loss_and_grads(plain, model, TEACHER))


def test_cached_twin_with_extras_off_equals_cached_mnrl(model):
    ours = loss_and_grads(CachedRetrofitInfoNCELoss(model, mini_batch_size=2), model)
    reference = loss_and_grads(CachedMultipleNegativesRankingLoss(model, mini_batch_size=2), model)
    assert_same(ours, reference)


def test_works_inside_matryoshka_loss(model):
    dims = [32, 16, 8]
    ours = loss_and_grads(MatryoshkaLoss(model, RetrofitInfoNCELoss(model), dims), model)
    reference = loss_and_grads(MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), dims), model)
    assert_same(ours, reference)
    cached = loss_and_grads(MatryoshkaLoss(model, CachedRetrofitInfoNCELoss(model, mini_batch_size=2), dims), model)
    assert_same(cached, reference)


def test_config_and_citation_describe_the_loss(model):
    config = RetrofitInfoNCELoss(model, scale=100.0, false_negative_margin=0.1).get_config_dict()
    assert config["scale"] == pytest.approx(100.0) and config["false_negative_margin"] == 0.1
    plain = RetrofitInfoNCELoss(model).citation
    assert "2510.14274" in plain and "1807.03748" in plain and "2308.03281" not in plain
    extras = RetrofitInfoNCELoss(model, query_negatives=True, teacher_margin=0.1, distill_weight=1.0).citation
    assert all(arxiv in extras for arxiv in ("2308.03281", "2407.15831", "1503.02531"))
    cached = CachedRetrofitInfoNCELoss(model, mini_batch_size=8)
    assert cached.get_config_dict()["mini_batch_size"] == 8 and "2101.06983" in cached.citation


def test_short_lora_training_run_lowers_the_loss(tiny_model_path, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    from st_retrofit.synth import build_demo_dataset

    torch.manual_seed(0)
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=8, lora_alpha=16,
                                 target_modules=["query", "key", "value"]))  # fmt: skip
    pairs = build_demo_dataset(languages=["en"], train_entities=64, eval_entities=2, seed=3)["train"]
    data = Dataset.from_dict({"anchor": pairs["query"], "positive": pairs["document"]})
    # A random model scores every candidate alike, so margins would mask them all; train plain + query negatives.
    loss = RetrofitInfoNCELoss(model, scale=20.0, query_negatives=True)
    before = loss(features_for(model, data), None).item()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=8, per_device_train_batch_size=16, learning_rate=2e-2,
        report_to="none", disable_tqdm=True, save_strategy="no", seed=0,
    )  # fmt: skip
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    model.eval()
    after = loss(features_for(model, data), None).item()
    assert after < before * 0.9, (before, after)


def features_for(model, data):
    return [model.preprocess(list(data[c][:32])) for c in ("anchor", "positive")]


def test_log_weight_of_the_positive_is_zero_even_when_everything_else_is_masked():
    loss = RetrofitInfoNCELoss(None, false_negative_margin=10.0)
    _, log_weight, positive, _ = logits_and_weights(loss)
    assert torch.all(log_weight[torch.arange(3), positive] == 0)
    value = loss.compute_loss_from_embeddings([ANCHORS, POSITIVES, NEGATIVES])
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(value.item())
