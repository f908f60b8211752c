from __future__ import annotations

import numpy as np
import pytest
import torch

from st_retrofit.recipe import RecipeError, recipe_from_dict
from st_retrofit.train import build_model, column_prompts, merge_adapter, resolve_loss_class, training_arguments


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
    args = training_arguments(recipe_from_dict(tiny_recipe_data), output_dir=str(tmp_path))
    assert args.per_device_train_batch_size == 8  # from the recipe
    assert args.batch_sampler == "no_duplicates"  # st-retrofit default
    assert args.seed == 7  # the recipe seed


def test_column_prompts_use_query_prompt_for_the_first_column_only():
    prompts = column_prompts(["query", "document", "negative_1"], {"query": "query: ", "document": "passage: "})
    assert prompts == {"query": "query: ", "document": "passage: ", "negative_1": "passage: "}


def test_loss_is_resolved_from_sentence_transformers():
    assert resolve_loss_class("MultipleNegativesRankingLoss").__name__ == "MultipleNegativesRankingLoss"
    with pytest.raises(ValueError, match="did you mean CachedMultipleNegativesRankingLoss"):
        resolve_loss_class("CachedMultipleNegativeRankingLoss")


def test_invalid_trainer_value_names_train_args(tiny_recipe_data):
    data = {**tiny_recipe_data, "train": {"args": {"lr_scheduler_type": "zigzag"}}}
    with pytest.raises(RecipeError, match="^train.args"):
        recipe_from_dict(data)


def test_interrupted_training_resumes_from_its_last_checkpoint(tiny_recipe_data, tmp_path, caplog):
    from datasets import Dataset

    from st_retrofit.train import train_stage

    rows = [{"query": f"query {i}", "document": f"document number {i}", "negative_1": f"other {i}"} for i in range(40)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "mined"))
    data = {**tiny_recipe_data, "train": {"args": {"per_device_train_batch_size": 8, "save_steps": 2,
                                                   "save_total_limit": None, "disable_tqdm": True}}}  # fmt: skip
    recipe = recipe_from_dict(data)
    train_stage(recipe, tmp_path / "mined", tmp_path / "train")
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


def test_a_mined_pool_is_cut_to_ntuples_for_the_stock_collator():
    from datasets import Dataset, DatasetDict

    from st_retrofit.train import _as_ntuples

    pool = Dataset.from_dict({
        "query": ["q1", "q2"], "document": ["d1", "d2"], "negatives": [["a", "b", "c"], ["x"]],
        "negative_ids": [[0, 1, 2], [3]], "label": [[0.9, 0.5, 0.4, 0.3], [0.8, 0.1]],
    })  # fmt: skip
    out = _as_ntuples(DatasetDict({"en": pool}), num_negatives=2)["en"]
    assert out.to_list() == [
        {"query": "q1", "document": "d1", "negative_1": "a", "negative_2": "b", "label": [0.9, 0.5, 0.4]}
    ]
