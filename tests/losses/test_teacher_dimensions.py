"""A teacher with other dimensions than the student (EmbeddingGemma's 768 for e5-small's 384): the relational
target takes any sizes, the library's embedding matching needs its learned projection, and the recipe says so."""

from __future__ import annotations

import pytest
import torch

from st_retrofit.config import ConfigError
from st_retrofit.train.config import TrainConfig
from st_retrofit.train.stage import check_teacher_dimensions


def test_embedding_matching_across_sizes_needs_the_projection_and_the_error_names_it():
    config = TrainConfig(loss="RetrofitInfoNCELoss", losses=[{"loss": "EmbedDistillLoss"}])
    with pytest.raises(ConfigError) as info:
        check_teacher_dimensions(config, student_dim=384, teacher_dim=768)
    assert info.value.key == "train.losses[0]"
    assert "teacher's have 768 dimensions, the student has 384" in info.value.message
    assert "projection_dim: 768" in info.value.message and "\n" not in info.value.message

    wrong = TrainConfig(
        loss="RetrofitInfoNCELoss", losses=[{"loss": "EmbedDistillLoss", "kwargs": {"projection_dim": 512}}]
    )
    with pytest.raises(ConfigError, match="projection_dim 512 is not 768"):
        check_teacher_dimensions(wrong, 384, 768)


@pytest.mark.parametrize(
    "losses",
    [
        [{"loss": "EmbedDistillLoss", "kwargs": {"projection_dim": 768}}],
        [{"loss": "TeacherEmbeddingLoss"}],  # rankings: any sizes
        [],
    ],
)
def test_what_takes_other_sizes_passes(losses):
    check_teacher_dimensions(TrainConfig(loss="RetrofitInfoNCELoss", losses=losses), 384, 768)


def test_same_sizes_need_no_projection():
    check_teacher_dimensions(TrainConfig(loss="RetrofitInfoNCELoss", losses=[{"loss": "EmbedDistillLoss"}]), 32, 32)


def test_the_projection_learns_to_map_the_student_into_a_wider_teachers_space(tiny_model):
    """EmbedDistillLoss with projection_dim, fed the (batch, columns, dim) teacher tensor the recipe's collator
    makes from the miner's cache, through WeightedLossSum as the recipe builds it: the distance falls."""
    from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss

    from st_retrofit.losses import RetrofitInfoNCELoss, WeightedLossSum

    generator = torch.Generator().manual_seed(0)
    student = [torch.randn(4, 32, generator=generator).requires_grad_(True) for _ in range(3)]
    teacher = torch.randn(4, 3, 48, generator=generator)
    embed = EmbedDistillLoss(tiny_model, distance_metric="cosine", projection_dim=48)
    total = WeightedLossSum(tiny_model, [(RetrofitInfoNCELoss(tiny_model), 1.0), (embed, 1.0)])
    labels = {"teacher_embeddings": teacher}
    optimizer = torch.optim.Adam([*student, *embed.parameters()], lr=0.05)
    before = total.compute_loss_from_embeddings(student, labels)["EmbedDistillLoss"].item()
    for _ in range(100):
        optimizer.zero_grad()
        parts = total.compute_loss_from_embeddings(student, labels)
        sum(parts.values()).backward()
        optimizer.step()
    after = total.compute_loss_from_embeddings(student, labels)["EmbedDistillLoss"].item()
    assert before > 0.5 and after < before / 5
