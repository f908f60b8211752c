"""The sampler, the collator and the retrofit loss together in the stock SentenceTransformerTrainer."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers import TrainerCallback

from st_retrofit.losses import RetrofitInfoNCELoss
from st_retrofit.mixing import MixingCallback, RetrofitDataCollator, TemperatureBatchSampler, task_id
from st_retrofit.synth import build_demo_dataset


def mined_like(rows: list[dict], task: str, pool_size: int, seed: int) -> Dataset:
    """Rows as the miner's pool output writes them, plus a task column."""
    rng = random.Random(seed)
    documents = [r["document"] for r in rows]
    out = {"query": [], "document": [], "negatives": [], "negative_ids": [], "label": [], "task": []}
    for row in rows:
        ids = rng.sample([j for j in range(len(rows)) if documents[j] != row["document"]], pool_size)
        out["query"].append(row["query"])
        out["document"].append(row["document"])
        out["negatives"].append([documents[j] for j in ids])
        out["negative_ids"].append(ids)
        out["label"].append([0.9] + [round(0.8 - 0.05 * r, 3) for r in range(pool_size)])
        out["task"].append(task)
    return Dataset.from_dict(out)


def two_datasets() -> DatasetDict:
    demo = build_demo_dataset(languages=["en", "de"], train_entities=24, eval_entities=2, queries_per_document=2)
    rows = list(demo["train"])
    english = [r for r in rows if r["language"] == "en"]
    german = [r for r in rows if r["language"] == "de"][:24]
    return DatasetDict({"qa-en": mined_like(english, "qa", 6, 0), "qa-de": mined_like(german, "retrieval", 6, 1)})


class RecordingCollator(RetrofitDataCollator):
    """Keeps every batch's token ids, so that two runs can be compared batch by batch."""

    def __call__(self, features):
        batch = super().__call__(features)
        self.record.append({k: v.tolist() for k, v in batch.items() if k.endswith("input_ids")})
        return batch


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def make_trainer(model_path: Path, data: DatasetDict, output_dir: Path, callbacks=(), seen_labels=None):
    model = SentenceTransformer(str(model_path), device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_steps=5,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=11,
        multi_dataset_batch_sampler=TemperatureBatchSampler.configure(alpha=0.5, dataset_names=list(data)),
    )
    collator = RecordingCollator(
        model.preprocess,
        num_negatives=2,
        range_max=5,
        sampling="teacher",
        prompts={"qa": "Given a question, find its answer: "},
        seed=11,
    )
    collator.record = []
    loss = RetrofitInfoNCELoss(model, scale=50.0, teacher_margin=0.02, distill_weight=0.5)
    if seen_labels is not None:
        inner = loss.compute_loss_from_embeddings

        def spy(embeddings, labels=None):
            seen_labels.append(labels)
            return inner(embeddings, labels)

        loss.compute_loss_from_embeddings = spy
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=loss,
        data_collator=collator,
        callbacks=[MixingCallback(), *callbacks],
    )
    return trainer, collator


def test_sampler_collator_and_retrofit_loss_train_together(tiny_model_path, tmp_path):
    data = two_datasets()
    labels: list = []
    trainer, collator = make_trainer(tiny_model_path, data, tmp_path / "run", seen_labels=labels)
    result = trainer.train()
    assert result.global_step == len(collator.record) > 10
    assert torch.isfinite(torch.tensor(result.training_loss))

    # Every batch: 4 rows of one task, (query, document, 2 drawn negatives), teacher scores and task ids.
    assert all(set(record) == {f"{c}_input_ids" for c in ("query", "document", "negative_1", "negative_2")}
               for record in collator.record)  # fmt: skip
    tasks = set()
    for label in labels:
        assert label["teacher_scores"].shape == (4, 3)
        assert len(set(label["task_ids"].tolist())) == 1
        tasks.add(label["task_ids"][0].item())
    assert tasks == {task_id("qa"), task_id("retrieval")}
    assert collator.stats["rows"] == 4 * len(collator.record)

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-4:]) < sum(losses[:4])

    out = tmp_path / "model"
    trainer.model.save_pretrained(str(out))
    reloaded = SentenceTransformer(str(out), device="cpu")
    assert reloaded.prompts["qa-query"] == "Given a question, find its answer: "
    assert reloaded.prompts["query"] == "query: "
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "TemperatureBatchSampler(alpha=0.5" in card
    assert "Collator(num_negatives=2" in card and "sampling='teacher'" in card


def test_resumed_training_sees_the_same_batches_and_negatives(tiny_model_path, tmp_path):
    data = two_datasets()
    full, full_collator = make_trainer(tiny_model_path, data, tmp_path / "full")
    full.train()
    steps = full.state.global_step
    per_epoch = steps // 2

    stop = per_epoch + 3  # in the second epoch, 2 steps after the last checkpoint
    checkpoint = stop // 5 * 5
    first, _ = make_trainer(tiny_model_path, data, tmp_path / "resumed", callbacks=[StopAt(stop)])
    first.train()
    assert (tmp_path / "resumed" / f"checkpoint-{checkpoint}").is_dir()

    resumed, resumed_collator = make_trainer(tiny_model_path, data, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / f"checkpoint-{checkpoint}"))
    assert resumed.state.global_step == steps
    assert resumed_collator.record == full_collator.record[checkpoint:]
    # The second epoch drew other negatives than the first for the same rows.
    assert full_collator.record[:per_epoch] != full_collator.record[per_epoch:]
    assert resumed_collator.epoch == full_collator.epoch == 1  # MixingCallback advanced the draw
    # The counts the report shows cover the whole run: the checkpoint carried those of the steps before it.
    rows = sum(len(batch["query_input_ids"]) for batch in full_collator.record)
    assert resumed_collator.stats["rows"] == full_collator.stats["rows"] == rows
    assert resumed_collator.stats == full_collator.stats
