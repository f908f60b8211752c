"""TeacherEmbeddingLoss and the mining cache's TeacherEmbeddings: distillation with no teacher forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from st_retrofit.config import ConfigError
from st_retrofit.losses import TeacherEmbeddingLoss
from st_retrofit.mining.cache import EmbeddingCache, TeacherEmbeddings
from st_retrofit.mixing import RetrofitDataCollator
from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict

QUERIES = ["When was Mikaro founded?", "Welche Stadt liegt am Fluss Sadu?"]
DOCUMENTS = ["Mikaro was founded in 1723.", "Kato liegt am Fluss Sadu.", "Dabe was founded in 1790.", "Dabe liegt."]


def columns(dim: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, dim, generator=generator) for _ in range(3)]  # anchor, positive, negative


def test_a_student_equal_to_its_teacher_has_nothing_to_learn(tiny_model):
    student = columns(32, seed=0)
    loss = TeacherEmbeddingLoss(tiny_model, scale=20.0)
    same = {"teacher_embeddings": torch.stack(student, dim=1) * 3.0}  # the scale of an embedding does not matter
    assert loss.compute_loss_from_embeddings(student, same).item() == pytest.approx(0.0, abs=1e-6)
    other = {"teacher_embeddings": torch.stack(columns(32, seed=1), dim=1)}
    assert loss.compute_loss_from_embeddings(student, other).item() > 0.05


def test_gradient_steps_bring_the_students_similarities_to_the_teachers_of_another_dimension(tiny_model):
    teacher = torch.stack(columns(48, seed=1), dim=1)  # a teacher with more dimensions than the student
    student = [c.clone().requires_grad_(True) for c in columns(32, seed=0)]
    loss = TeacherEmbeddingLoss(tiny_model, scale=20.0, teacher_scale=50.0)
    optimizer = torch.optim.SGD(student, lr=0.5)
    before = loss.compute_loss_from_embeddings(student, {"teacher_embeddings": teacher}).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss.compute_loss_from_embeddings(student, {"teacher_embeddings": teacher}).backward()
        optimizer.step()
    after = loss.compute_loss_from_embeddings(student, {"teacher_embeddings": teacher}).item()
    assert after < before / 4

    # The teacher's ranking of the batch's documents for each query is now the student's.
    def ranking(embeddings):
        q, d = F.normalize(embeddings[0], dim=-1), F.normalize(torch.cat(list(embeddings[1:])), dim=-1)
        return (q @ d.T).argmax(dim=1)

    assert torch.equal(ranking([s.detach() for s in student]), ranking(list(teacher.transpose(0, 1))))


def test_missing_or_misshapen_teacher_embeddings_are_named(tiny_model):
    loss = TeacherEmbeddingLoss(tiny_model)
    student = columns(32, seed=0)
    with pytest.raises(ValueError, match="labels\\['teacher_embeddings'\\]"):
        loss.compute_loss_from_embeddings(student, {"teacher_scores": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match=r"\(batch, columns, dim\) = \(4, 3, dim\)"):
        loss.compute_loss_from_embeddings(student, {"teacher_embeddings": torch.zeros(3, 4, 32)})


def test_the_librarys_embedding_distillation_gets_its_entry_of_the_label_dict(tiny_model):
    """EmbedDistillLoss (sentence-transformers) beside RetrofitInfoNCELoss: it reads the cached teacher embeddings
    from the collator's dict, exactly as it reads a plain (batch, columns, dim) label on its own."""
    from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss

    from st_retrofit.losses import RetrofitInfoNCELoss, WeightedLossSum

    student = columns(32, seed=0)
    teacher = torch.stack(columns(32, seed=1), dim=1)
    labels = {"teacher_scores": torch.rand(4, 2), "teacher_embeddings": teacher}
    embed = EmbedDistillLoss(tiny_model, distance_metric="cosine")
    total = WeightedLossSum(tiny_model, [(RetrofitInfoNCELoss(tiny_model, distill_weight=0.5), 1.0), (embed, 0.5)])
    parts = total.compute_loss_from_embeddings(student, labels)
    alone = embed.compute_loss_from_embeddings(student, list(teacher.unbind(1)))  # what its forward makes of it
    assert parts["EmbedDistillLoss"].item() == pytest.approx(0.5 * alone.item(), abs=1e-6)
    assert {"infonce", "distill"} <= set(parts)  # the main loss still reads the dict's teacher scores


@pytest.fixture
def cached(tiny_model, tmp_path):
    """The tiny model's query and document embeddings in a mining cache, as a mining run leaves them."""
    query = EmbeddingCache(tmp_path / "cache", tiny_model, "query")
    document = EmbeddingCache(tmp_path / "cache", tiny_model, "document")
    queries = query.encode(QUERIES, show_progress_bar=False).read()
    documents = document.encode(DOCUMENTS, show_progress_bar=False).read()
    report = {"cache": {"query_namespace": str(query.folder), "document_namespace": str(document.folder)}}
    return TeacherEmbeddings.from_mining_report(report), queries, documents


def test_the_lookup_returns_the_miners_embeddings_by_text_and_role(cached):
    teacher, queries, documents = cached
    assert np.array_equal(teacher.lookup(DOCUMENTS[::-1], "document"), documents[::-1])
    assert np.array_equal(teacher.lookup(QUERIES, "query"), queries)
    with pytest.raises(KeyError, match="1 of 2 texts have no teacher document embedding.*'never mined'"):
        teacher.lookup([DOCUMENTS[0], "never mined"], "document")
    with pytest.raises(KeyError, match="no teacher query embedding"):  # a document is no query
        teacher.lookup([DOCUMENTS[0]], "query")


def test_the_collator_hands_the_loss_the_teacher_embeddings_of_each_column(tiny_model, cached):
    teacher, queries, documents = cached
    rows = [
        {"query": QUERIES[i], "document": DOCUMENTS[i], "negatives": [DOCUMENTS[2 + i]], "label": [0.9, 0.5]}
        for i in range(2)
    ]
    collator = RetrofitDataCollator(tiny_model.preprocess, num_negatives=1, teacher_embeddings=teacher)
    label = collator(rows)["label"]
    assert label["teacher_embeddings"].shape == (2, 3, 32)  # (batch, columns, dim), EmbedDistillLoss's layout
    assert np.allclose(label["teacher_embeddings"][:, 0].numpy(), queries.astype(np.float32))
    assert np.allclose(label["teacher_embeddings"][:, 1].numpy(), documents[:2].astype(np.float32))
    assert np.allclose(label["teacher_embeddings"][:, 2].numpy(), documents[2:].astype(np.float32))
    assert label["teacher_scores"].shape == (2, 2)  # the scores RetrofitInfoNCELoss reads are still there


def test_a_recipe_adds_the_term_and_trains_on_the_miners_cache(tiny_recipe_data, tmp_path):
    terms = [{"loss": "TeacherEmbeddingLoss", "weight": 1.0, "kwargs": {"scale": 20.0}},
             {"loss": "EmbedDistillLoss", "weight": 0.5}]  # fmt: skip
    data = {**tiny_recipe_data, "mining": {**tiny_recipe_data["mining"], "cache_dir": str(tmp_path / "cache")},
            "train": {**tiny_recipe_data["train"], "loss": "RetrofitInfoNCELoss", "losses": terms}}  # fmt: skip
    data["train"]["args"] = {**data["train"]["args"], "max_steps": 2}
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth", "mine", "train"])
    history = json.loads(next((recipe.run_dir / "train").rglob("trainer_state.json")).read_text())["log_history"]
    assert any("TeacherEmbeddingLoss" in entry and "EmbedDistillLoss" in entry for entry in history)

    # Without mining there are no teacher embeddings: the recipe says so before training.
    data["name"], data["mining"] = "no-mining", {"enabled": False}
    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe_from_dict(data), stages=["synth", "mine", "train"])
    assert info.value.key == "train.losses" and "turn mining on" in info.value.message
    data["train"]["losses"] = terms[1:]  # the library's loss needs them just the same
    with pytest.raises(ConfigError, match="turn mining on"):
        recipe_from_dict(data)
