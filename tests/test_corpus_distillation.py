"""Distilling a teacher on the unlabeled corpus: the orthogonal projection keeps the student's cosines and starts at
the Procrustes fit; the synth, mine and train stages carry the unlabeled rows from the corpus to their own batches;
the loss's parameters survive a resume; the recipe refuses what cannot work, by key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from st_retrofit.config import ConfigError
from st_retrofit.recipe import recipe_from_dict

DOCUMENTS = {
    "en": [
        "The ls command lists the files of a directory. It sorts them by name unless told otherwise.",
        "The cp command copies files and directories. It keeps the mode of each file with an option.",
        "The mv command moves or renames files. A file moved within one file system keeps its inode.",
        "The tar program saves many files together into one archive. It can also restore them later.",
        "The grep command prints lines that match a pattern. It reads standard input without a file.",
        "The date command prints the time and the date. It can also set the clock of the system.",
    ],
    "de": [
        "Der Befehl ls listet die Dateien eines Verzeichnisses auf. Er sortiert sie nach ihrem Namen.",
        "Der Befehl cp kopiert Dateien und Verzeichnisse. Er behält auf Wunsch die Rechte jeder Datei.",
        "Der Befehl mv verschiebt oder benennt Dateien um. Eine Datei im selben Dateisystem bleibt gleich.",
        "Das Programm tar speichert viele Dateien in einem Archiv. Es kann sie später wiederherstellen.",
        "Der Befehl grep gibt Zeilen aus, die zu einem Muster passen. Er liest auch die Standardeingabe.",
        "Der Befehl date gibt die Uhrzeit und das Datum aus. Er kann auch die Systemuhr stellen.",
    ],
}


def _rotation(student_dim: int, teacher_dim: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(teacher_dim, student_dim)))
    return q  # (teacher_dim, student_dim), orthonormal columns


def test_the_procrustes_fit_finds_a_rotation_and_the_projection_keeps_every_cosine(tiny_model):
    from st_retrofit.losses import OrthogonalEmbedDistillLoss

    rng = np.random.default_rng(1)
    student = rng.normal(size=(200, 32))
    student /= np.linalg.norm(student, axis=1, keepdims=True)
    rotation = _rotation(32, 48)
    loss = OrthogonalEmbedDistillLoss(tiny_model, teacher_dim=48)
    assert loss.fit(student, student @ rotation.T) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(loss.projection.weight.detach().numpy(), rotation, atol=1e-4)

    # Training moves W but keeps W^T W = I, so the student's cosines are those of its projected vectors.
    teacher = torch.nn.functional.normalize(torch.randn(8, 48), dim=-1)
    embeddings = torch.randn(8, 32, requires_grad=True)
    optimizer = torch.optim.Adam([embeddings, *loss.parameters()], lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        loss.compute_loss_from_embeddings([embeddings], [teacher]).backward()
        optimizer.step()
    weight = loss.projection.weight.detach()
    assert not torch.allclose(weight, torch.as_tensor(rotation, dtype=weight.dtype), atol=1e-3)
    assert torch.allclose(weight.T @ weight, torch.eye(32), atol=1e-4)
    s = torch.nn.functional.normalize(embeddings.detach(), dim=-1)
    assert torch.allclose(s @ s.T, (s @ weight.T) @ (s @ weight.T).T, atol=1e-5)


def test_a_free_projection_does_not_keep_cosines_and_this_one_fits_better_from_the_start(tiny_model):
    """The point of the constraint and of the fit: the library's projection, random and free, starts far from the
    teacher, and once fitted it can shear the student's geometry."""
    from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss

    from st_retrofit.losses import OrthogonalEmbedDistillLoss

    rng = np.random.default_rng(2)
    student = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(64, 32)), dtype=torch.float32), dim=-1)
    teacher = student @ torch.as_tensor(_rotation(32, 48, seed=3), dtype=torch.float32).T
    ours = OrthogonalEmbedDistillLoss(tiny_model, teacher_dim=48)
    ours.fit(student.numpy(), teacher.numpy())
    library = EmbedDistillLoss(tiny_model, projection_dim=48)
    assert ours.compute_loss_from_embeddings([student], [teacher]).item() < 1e-5
    assert library.compute_loss_from_embeddings([student], [teacher]).item() > 0.5
    w = library.projection.weight.detach()
    assert not torch.allclose(w.T @ w, torch.eye(32), atol=0.1)


def test_a_teacher_narrower_than_the_student_is_refused(tiny_model):
    from st_retrofit.losses import OrthogonalEmbedDistillLoss

    with pytest.raises(ValueError, match=r"teacher_dim \(16\) must be at least the student's embedding size \(32\)"):
        OrthogonalEmbedDistillLoss(tiny_model, teacher_dim=16)


def _corpus_recipe(tiny_recipe_data, wide_teacher_path, tmp_path, **train) -> dict:
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as f:
        for language, texts in DOCUMENTS.items():
            for i, text in enumerate(texts):
                f.write(json.dumps({"id": f"{language}/{i}", "text": text, "language": language}) + "\n")
    return {
        **tiny_recipe_data,
        "model": {**tiny_recipe_data["model"], "lora": None},
        "synth": {"source": "corpus", "corpus": {"path": str(corpus)}, "backend": {"type": "heuristic"},
                  "templates": ["lead-sentence"], "eval_fraction": 0.0,
                  "validation": {"check_language": False, "near_duplicate_threshold": None}},
        "mining": {"teacher": str(wide_teacher_path), "num_negatives": 1, "relative_margin": None,
                   "batch_size": 8, "unlabeled_per_language": None},
        "train": {"corpus_distillation": {"loss": "OrthogonalEmbedDistillLoss", "weight": 1.0},
                  "args": {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
                           "save_steps": 2, "save_total_limit": None, "disable_tqdm": True}, **train},
    }  # fmt: skip


def test_every_training_document_reaches_the_student_through_the_teacher(
    tiny_recipe_data, wide_teacher_path, tmp_path
):
    from datasets import load_from_disk

    from st_retrofit.mining.cache import TeacherEmbeddings
    from st_retrofit.pipeline import run_pipeline

    recipe = recipe_from_dict(_corpus_recipe(tiny_recipe_data, wide_teacher_path, tmp_path))
    run_pipeline(recipe, stages=["synth", "mine", "train"])
    run = recipe.run_dir
    unlabeled = load_from_disk(str(run / "mine" / "unlabeled"))
    # Every document, its opening sentence as the query (pairs were made of them too, but distillation sees all).
    assert sorted(unlabeled["document"]) == sorted(t for texts in DOCUMENTS.values() for t in texts)
    assert "The ls command lists the files of a directory." in unlabeled["query"]
    report = json.loads((run / "mine" / "report.json").read_text())
    assert report["unlabeled"] == {"rows": 12, "languages": {"en": 6, "de": 6}}
    teacher = TeacherEmbeddings.from_mining_report(report)
    assert teacher.lookup(unlabeled["query"], "query").shape == (12, 48)
    # The unlabeled rows had batches of their own, and the loss its own parameters in each checkpoint.
    mixture = json.loads((run / "train" / "mixture.json").read_text())
    assert "unlabeled" in {group["group"] for group in mixture["groups"]}
    checkpoints = sorted((run / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "loss_parameters.safetensors").is_file() for c in checkpoints)


def test_a_resumed_run_restores_the_losss_projection_and_ends_where_an_uninterrupted_one_does(
    tiny_recipe_data, wide_teacher_path, tmp_path
):
    import shutil

    from safetensors.torch import load_file

    from st_retrofit.pipeline import run_pipeline
    from st_retrofit.train import train_stage

    recipe = recipe_from_dict(_corpus_recipe(tiny_recipe_data, wide_teacher_path, tmp_path))
    run_pipeline(recipe, stages=["synth", "mine", "train"])
    train = recipe.run_dir / "train"
    whole = load_file(str(train / "model" / "model.safetensors"))
    checkpoints = sorted(train / "checkpoints" / c.name for c in (train / "checkpoints").glob("checkpoint-*"))
    steps = sorted(int(c.name.rsplit("-", 1)[1]) for c in checkpoints)
    assert len(steps) >= 3
    # A kill after the second-to-last checkpoint: what came after it is gone, and the run goes on from it.
    for step in steps[-1:]:
        shutil.rmtree(train / "checkpoints" / f"checkpoint-{step}")
    shutil.rmtree(train / "model")
    train_stage(recipe, recipe.run_dir / "mine" / "dataset", train)
    resumed = load_file(str(train / "model" / "model.safetensors"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_the_recipe_refuses_distillation_the_teacher_did_not_prepare_for(
    tiny_recipe_data, wide_teacher_path, tmp_path
):
    data = _corpus_recipe(tiny_recipe_data, wide_teacher_path, tmp_path)
    data["mining"]["unlabeled_per_language"] = 0
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data).check_environment()
    assert info.value.key == "train.corpus_distillation"
    assert "set mining.unlabeled_per_language" in info.value.message

    data = _corpus_recipe(tiny_recipe_data, wide_teacher_path, tmp_path)
    data["train"]["corpus_distillation"] = {"loss": "MultipleNegativesRankingLoss"}
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data).check_environment()
    assert info.value.key == "train.corpus_distillation.loss" and "OrthogonalEmbedDistillLoss" in info.value.message


def test_the_demo_source_has_no_unlabeled_rows_and_the_mine_stage_says_so(tiny_recipe_data, wide_teacher_path):
    from st_retrofit.pipeline import run_pipeline

    data = {**tiny_recipe_data, "mining": {**tiny_recipe_data["mining"], "unlabeled_per_language": 5}}
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth"])
    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe, stages=["mine"])
    assert info.value.key == "mining.unlabeled_per_language" and "source corpus" in info.value.message


def test_a_cap_per_language_draws_that_many_of_each_with_the_seed():
    from datasets import Dataset

    from st_retrofit.mining.stage import per_language

    rows = Dataset.from_dict({"language": ["en"] * 10 + ["de"] * 3, "query": [str(i) for i in range(13)]})
    kept = per_language(rows, 4, seed=0)
    assert sorted(kept["language"]) == ["de"] * 3 + ["en"] * 4
    assert kept["query"] == per_language(rows, 4, seed=0)["query"] != per_language(rows, 4, seed=1)["query"]
    assert len(per_language(rows, None, seed=0)) == 13


def test_a_saved_projection_loads_into_a_new_loss(tiny_model, tmp_path):
    from st_retrofit.losses import OrthogonalEmbedDistillLoss

    rng = np.random.default_rng(4)
    student = rng.normal(size=(100, 32))
    first = OrthogonalEmbedDistillLoss(tiny_model, teacher_dim=48)
    first.fit(student, student @ _rotation(32, 48, seed=5).T)
    first.save_projection(tmp_path / "projection.safetensors")
    second = OrthogonalEmbedDistillLoss(tiny_model, teacher_dim=48)
    second.load_projection(tmp_path / "projection.safetensors")
    assert torch.allclose(first.projection.weight, second.projection.weight, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(48, 32\), expected \(64, 32\)"):
        OrthogonalEmbedDistillLoss(tiny_model, teacher_dim=64).load_projection(tmp_path / "projection.safetensors")


def test_corpus_candidates_draw_negatives_from_documents_no_pair_was_made_of(
    tiny_recipe_data, wide_teacher_path, tmp_path
):
    from datasets import load_from_disk

    from st_retrofit.pipeline import run_pipeline

    data = _corpus_recipe(tiny_recipe_data, wide_teacher_path, tmp_path)
    # One pair per language: every other document of the language can only be a negative through the corpus.
    data["synth"]["max_per_language"] = 1
    data["mining"] |= {"unlabeled_per_language": 0, "range_max": 5, "num_negatives": 2, "output": "pool"}
    data["train"] = {}
    pairs_only = recipe_from_dict(data | {"name": "pairs-only"})
    data["mining"]["corpus_candidates"] = True
    with_corpus = recipe_from_dict(data | {"name": "with-corpus"})
    for recipe in (pairs_only, with_corpus):
        run_pipeline(recipe, stages=["synth", "mine"])

    def negatives(recipe) -> set[str]:
        mined = load_from_disk(str(recipe.run_dir / "mine" / "dataset"))
        return {text for split in mined.values() for row in split["negatives"] for text in row}

    assert negatives(pairs_only) == set()  # one document per language: nothing else to draw from
    drawn = negatives(with_corpus)
    assert drawn and drawn <= {t for texts in DOCUMENTS.values() for t in texts}
    # Negatives stay in their pair's language (mining.group_by: language).
    mined = load_from_disk(str(with_corpus.run_dir / "mine" / "dataset"))
    for language, split in mined.items():
        assert all(text in DOCUMENTS[language] for row in split["negatives"] for text in row)


def test_corpus_candidates_need_the_corpus_rows(tiny_recipe_data):
    from st_retrofit.pipeline import run_pipeline

    data = {**tiny_recipe_data, "mining": {**tiny_recipe_data["mining"], "corpus_candidates": True}}
    recipe = recipe_from_dict(data)
    run_pipeline(recipe, stages=["synth"])
    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe, stages=["mine"])
    assert info.value.key == "mining.corpus_candidates" and "synth.source corpus" in info.value.message
