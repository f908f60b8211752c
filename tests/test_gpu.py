"""The training path on a CUDA GPU (deselected by default; run with `pytest -m gpu` where there is one)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sentence_transformers import SentenceTransformer

from st_retrofit.pipeline import run_pipeline
from st_retrofit.recipe import recipe_from_dict

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_training_on_the_gpu_exports_a_model_that_loads_on_the_cpu(tiny_recipe_data, lora):
    args = {**tiny_recipe_data["train"]["args"], "bf16": True}
    model = tiny_recipe_data["model"] if lora else {**tiny_recipe_data["model"], "lora": None}
    recipe = recipe_from_dict({**tiny_recipe_data, "model": model, "train": {"args": args,
                                                                          "loss": "RetrofitInfoNCELoss"}})  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    assert torch.cuda.max_memory_allocated() > 0  # the trainer ran on the GPU
    metrics = json.loads((recipe.run_dir / "train" / "train_metrics.json").read_text())
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    exported = SentenceTransformer(str(outputs["train"]), device="cpu")
    assert next(exported.parameters()).dtype == torch.float32  # bf16 autocast keeps fp32 master weights
    assert exported.encode(["Когда был основан город Микаро?"]).shape == (1, 32)
    results = json.loads(outputs["eval"].read_text())
    assert 0 <= results["retrofitted"]["mean"]["ndcg"] <= 1


def run_300m_recipe(tmp_path, tokenizer_path, layers: int = 12, width: int = 768, extra: tuple[str, ...] = ()):
    """recipes/retrofit-300m.yaml's model, mining, mixing and train sections (GradCache loss, LoRA on every linear
    layer, bf16, collation workers) on a random encoder and the demo data instead of the Hub."""
    from pathlib import Path

    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from st_retrofit.recipe import load_recipe

    hf = tmp_path / "hf"
    tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_path))
    tokenizer.save_pretrained(hf)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=width // 64, intermediate_size=4 * width)  # fmt: skip
    BertModel(config, add_pooling_layer=False).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=128)
    SentenceTransformer(modules=[transformer, Pooling(width, "mean"), Normalize()]).save_pretrained(
        str(tmp_path / "m")
    )
    model = str(tmp_path / "m")
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "retrofit-300m.yaml",
        [f"model.base={model}", f"mining.teacher={model}", "synth.source=demo", "synth.train_entities=60",
         "data.sources=[]", "mining.group_by=language", "train.args.per_device_train_batch_size=64",
         "train.loss_kwargs.mini_batch_size=16", "train.args.max_steps=6", "train.args.save_steps=3",
         # A random encoder scores every pair alike, so the margin would mask every candidate and zero the loss.
         "train.loss_kwargs.false_negative_margin=null",
         f"output_dir={tmp_path / 'runs'}", *extra],
    )  # fmt: skip
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    metrics = json.loads((recipe.run_dir / "train" / "train_metrics.json").read_text())
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    assert metrics["epoch"] > 0 and (recipe.run_dir / "train" / "adapter").is_dir()
    exported = SentenceTransformer(str(outputs["train"]), device="cpu")
    assert exported.encode(["query: Wann wurde Mikaro gegründet?"]).shape == (1, width)
    return recipe


def test_the_300m_recipe_trains_on_the_gpu_with_its_own_settings(tmp_path, tiny_model_path):
    recipe = run_300m_recipe(tmp_path, tiny_model_path)
    assert recipe.train.args["bf16"] and recipe.train.args["dataloader_num_workers"] == 4
