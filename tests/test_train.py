from __future__ import annotations

import numpy as np
import pytest
import torch

from st_retrofit.config import ConfigError
from st_retrofit.recipe import recipe_from_dict
from st_retrofit.train import build_collator, build_model, merge_adapter, resolve_loss_class


def test_lora_model_trains_only_adapter_weights(tiny_recipe_data):
    model = build_model(recipe_from_dict(tiny_recipe_data))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert model.max_seq_length == 48


def test_without_lora_every_weight_trains(tiny_recipe_data):
    data = {**tiny_recipe_data, "model": {**tiny_recipe_data["model"], "lora": None}}
    model = build_model(recipe_from_dict(data))
    assert all(p.requires_grad for p in model.parameters())


def test_merged_model_reproduces_the_adapter_model(tiny_recipe_data, tmp_path):
    recipe = recipe_from_dict(tiny_recipe_data)
    model = build_model(recipe)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero; give the adapter a real effect
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.eval()
    texts = ["When was Mikaro founded?", "Микаро — город на реке Саду."]
    adapted = model.encode(texts)
    model.save_pretrained(str(tmp_path / "adapter"))

    merged = merge_adapter(recipe.model.base, tmp_path / "adapter", recipe.model.max_seq_length)
    np.testing.assert_allclose(merged.encode(texts), adapted, atol=1e-5)
    base = build_model(recipe_from_dict({**tiny_recipe_data, "model": {"base": recipe.model.base, "lora": None}}))
    assert not np.allclose(base.encode(texts), adapted, atol=1e-3)

    merged.save_pretrained(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()


def test_training_arguments_merge_defaults_recipe_and_seed(tiny_recipe_data, tmp_path):
    recipe = recipe_from_dict(tiny_recipe_data)
    args = recipe.train.training_arguments(output_dir=str(tmp_path), seed=recipe.seed)
    assert args.per_device_train_batch_size == 8  # from the recipe
    assert args.seed == 7  # the recipe seed


def test_trainer_arguments_that_mixing_replaces_are_refused_by_name(tiny_recipe_data):
    for key, value in (("batch_sampler", "no_duplicates"), ("prompts", "query: ")):
        data = {**tiny_recipe_data, "train": {"args": {key: value}}}
        with pytest.raises(ConfigError, match=rf"^train.args.{key}: set by the mixing section; use mixing"):
            recipe_from_dict(data)


def test_collator_labels_follow_the_loss(tiny_recipe_data, tiny_model):
    retrofit = {**tiny_recipe_data, "train": {"loss": "RetrofitInfoNCELoss"}}
    assert build_collator(recipe_from_dict(retrofit), tiny_model).labels == "dict"
    stock = {**tiny_recipe_data, "train": {"loss": "MarginMSELoss"}}
    assert build_collator(recipe_from_dict(stock), tiny_model).labels == "teacher_scores"
    collator = build_collator(recipe_from_dict({**tiny_recipe_data, "mixing": {"num_negatives": 5}}), tiny_model)
    assert collator.num_negatives == 5 and collator.seed == 7


def test_loss_is_resolved_from_sentence_transformers():
    assert resolve_loss_class("MultipleNegativesRankingLoss").__name__ == "MultipleNegativesRankingLoss"
    with pytest.raises(ValueError, match="did you mean CachedMultipleNegativesRankingLoss"):
        resolve_loss_class("CachedMultipleNegativeRankingLoss")


def test_invalid_trainer_value_names_train_args(tiny_recipe_data):
    data = {**tiny_recipe_data, "train": {"args": {"lr_scheduler_type": "zigzag"}}}
    with pytest.raises(ConfigError, match="^train.args"):
        recipe_from_dict(data)


def _trained_with_checkpoints(tiny_recipe_data, tmp_path):
    """5 steps on 40 rows with a checkpoint every 2 (checkpoint-2, -4, -5 kept); returns the recipe."""
    from datasets import Dataset

    from st_retrofit.train import train_stage

    rows = [{"query": f"query {i}", "document": f"document number {i}", "negative_1": f"other {i}"} for i in range(40)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "mined"))
    data = {**tiny_recipe_data, "train": {"args": {"per_device_train_batch_size": 8, "save_steps": 2,
                                                   "save_total_limit": None, "disable_tqdm": True}}}  # fmt: skip
    recipe = recipe_from_dict(data)
    train_stage(recipe, tmp_path / "mined", tmp_path / "train")
    return recipe


def test_interrupted_training_resumes_from_its_last_checkpoint(tiny_recipe_data, tmp_path, caplog):
    from st_retrofit.train import train_stage

    recipe = _trained_with_checkpoints(tiny_recipe_data, tmp_path)
    checkpoints = sorted((tmp_path / "train" / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]

    # Simulate a kill after step 4: the final checkpoint and the exported model are gone.
    import shutil

    shutil.rmtree(checkpoints[-1])
    shutil.rmtree(tmp_path / "train" / "model")
    with caplog.at_level("INFO", logger="st_retrofit.train"):
        train_stage(recipe, tmp_path / "mined", tmp_path / "train")
    assert "Resuming training from" in caplog.text and "checkpoint-4" in caplog.text
    assert (tmp_path / "train" / "checkpoints" / "checkpoint-5").is_dir()
    assert (tmp_path / "train" / "model" / "model.safetensors").is_file()


def test_a_checkpoint_cut_short_while_saving_is_removed_and_the_one_before_resumed(tiny_recipe_data, tmp_path, caplog):
    """A kill during a checkpoint's save leaves its folder without a complete trainer_state.json (the last file
    transformers writes); the rerun must not take it (found by the fault-injection test)."""
    import json
    import shutil

    from st_retrofit.train import train_stage

    recipe = _trained_with_checkpoints(tiny_recipe_data, tmp_path)
    last = tmp_path / "train" / "checkpoints" / "checkpoint-5"
    (last / "trainer_state.json").write_text('{"global_step": 5, "log_hist')  # cut short
    shutil.rmtree(tmp_path / "train" / "model")
    with caplog.at_level("INFO", logger="st_retrofit.train"):
        train_stage(recipe, tmp_path / "mined", tmp_path / "train")
    assert (
        f"Removing {last}" in caplog.text and "Resuming training from" in caplog.text and "checkpoint-4" in caplog.text
    )
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == 5  # saved again, whole
    assert (tmp_path / "train" / "model" / "model.safetensors").is_file()


def test_train_stage_draws_negatives_from_a_mined_pool_and_records_the_mixture(tiny_recipe_data, tmp_path):
    import json

    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer

    from st_retrofit.train import train_stage

    def pool_split(language: str, n: int) -> Dataset:
        docs = [f"{language} document number {i}" for i in range(n)]
        return Dataset.from_dict({
            "query": [f"{language} query {i}" for i in range(n)],
            "document": docs,
            "negatives": [[docs[(i + j) % n] for j in range(1, 6)] for i in range(n)],
            "negative_ids": [[(i + j) % n for j in range(1, 6)] for i in range(n)],
            "label": [[0.9, 0.7, 0.6, 0.5, 0.4, 0.3] for _ in range(n)],
        })  # fmt: skip

    DatasetDict({"en": pool_split("en", 24), "de": pool_split("de", 16)}).save_to_disk(str(tmp_path / "mined"))
    data = {
        **tiny_recipe_data,
        "mixing": {"alpha": 0.5, "range_max": 4, "sampling": "teacher", "prompts": {"*": "search: "}},
        "train": {"loss": "RetrofitInfoNCELoss", "loss_kwargs": {"distill_weight": 0.5},
                  "args": {"per_device_train_batch_size": 4, "disable_tqdm": True}},
    }  # fmt: skip
    model_dir = train_stage(recipe_from_dict(data), tmp_path / "mined", tmp_path / "train")

    report = json.loads((tmp_path / "train" / "mixture.json").read_text())
    assert {g["group"] for g in report["groups"]} == {"de", "en"}
    assert report["sampler"]["alpha"] == 0.5 and report["sampler"]["num_batches"] == 10
    assert report["collator"]["num_negatives"] == 2  # mining.num_negatives of the tiny recipe
    assert report["negative_sampling"]["rows"] == 40
    assert (tmp_path / "train" / "mixture.png").stat().st_size > 0

    model = SentenceTransformer(str(model_dir), device="cpu")  # merged LoRA model
    assert model.prompts["query"] == "search: "
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "TemperatureBatchSampler(alpha=0.5" in card and "RetrofitDataCollator(num_negatives=2" in card


def test_a_batch_larger_than_the_training_rows_names_the_key_before_the_model_loads(tiny_recipe_data, tmp_path):
    from datasets import Dataset

    from st_retrofit.train import train_stage

    Dataset.from_dict({"query": ["a", "b"], "document": ["c", "d"]}).save_to_disk(str(tmp_path / "mined"))
    recipe = recipe_from_dict(tiny_recipe_data)  # batches of 8
    with pytest.raises(ConfigError, match=r"^train.args.per_device_train_batch_size: 8 is more than the 2 training"):
        train_stage(recipe, tmp_path / "mined", tmp_path / "train")
    assert not (tmp_path / "train" / "checkpoints").exists()


def test_a_weight_for_a_group_that_does_not_exist_names_the_recipe_key(tiny_recipe_data, tmp_path):
    from datasets import Dataset

    from st_retrofit.train import train_stage

    rows = {"query": [f"query {i}" for i in range(8)], "document": [f"document {i}" for i in range(8)]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "mined"))
    recipe = recipe_from_dict({**tiny_recipe_data, "mixing": {"weights": {"fr": 2.0}}})
    with pytest.raises(ConfigError, match=r"^mixing.weights: no group named \['fr'\]; the groups are \['train'\]"):
        train_stage(recipe, tmp_path / "mined", tmp_path / "train")


def test_a_lora_adapter_is_drawn_from_the_recipe_seed(tiny_recipe_data):
    """Two builds of one recipe start from the same adapter (LoRA runs repeat bit for bit, like full fine-tuning);
    another seed draws another one. Random draws in between (anything else seeding or using torch) do not matter."""
    import torch

    def adapter(seed):
        torch.manual_seed(seed * 1000 + 1)  # whatever state the process is in
        model = build_model(recipe_from_dict({**tiny_recipe_data, "seed": seed}))
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k}

    first, again, other = adapter(7), adapter(7), adapter(8)
    assert first and all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_validating_bf16_without_a_gpu_warns_once_and_leaves_the_refusal_to_the_train_stage(tiny_recipe_data, caplog):
    """A recipe is often checked on a laptop and trained on a GPU machine: validation says what will happen here."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = {**tiny_recipe_data, "train": {"args": {**tiny_recipe_data["train"]["args"], "bf16": True}}}
    with caplog.at_level("WARNING", logger="st_retrofit.train"):
        recipe_from_dict(data)  # which runs the checks, as validate does
    warnings = [r.getMessage() for r in caplog.records if "needs a GPU" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("train.args.bf16 needs a GPU and this machine has none")
