"""The ``train`` stage: contrastive training with the stock ``SentenceTransformerTrainer``, LoRA optional.

The model is resolved from the recipe (:func:`st_retrofit.models.load_model`), an adapter is attached through
sentence-transformers' own peft integration, the loss is built from its class name, batches are drawn by
:class:`~st_retrofit.mixing.TemperatureBatchSampler` and collated by
:class:`~st_retrofit.mixing.RetrofitDataCollator` (recipe section ``mixing``), and training resumes from the last
checkpoint when a run was interrupted. At export the adapter is merged into the base weights, so the saved model
is a plain sentence-transformers folder that needs neither peft nor st-retrofit to load.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    from st_retrofit.recipe import Recipe

logger = logging.getLogger(__name__)

# Settings that differ from transformers' defaults; every one can be overridden under `train.args`.
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "num_train_epochs": 1,
    "per_device_train_batch_size": 32,
    "learning_rate": 1e-4,
    "warmup_steps": 0.1,  # a float is a fraction of the total steps
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "report_to": "none",
    "disable_tqdm": False,
}


# Trainer arguments that the mixing section replaces: our sampler forms the batches, our collator applies prompts.
SET_BY_MIXING = {
    "batch_sampler": "mixing.no_duplicates and mixing.group_by",
    "multi_dataset_batch_sampler": "mixing.alpha, mixing.weights and mixing.caps",
    "prompts": "mixing.prompts",
}


def resolve_loss_class(name: str) -> type:
    """The loss class called ``name`` in ``st_retrofit.losses`` or ``sentence_transformers.sentence_transformer.losses``."""
    import difflib

    from sentence_transformers.sentence_transformer import losses

    from st_retrofit import losses as retrofit_losses

    loss_class = getattr(retrofit_losses, name, None) or getattr(losses, name, None)
    if not isinstance(loss_class, type):
        known = list(retrofit_losses.__all__) + [n for n in dir(losses) if n.endswith("Loss")]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown loss {name!r}{hint}")
    return loss_class


# Precision settings that only a GPU can check; validation on a machine without one leaves them to the train stage.
GPU_ONLY_ARGS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def training_arguments(
    recipe: Recipe, output_dir: str, validating: bool = False
) -> SentenceTransformerTrainingArguments:
    """``SentenceTransformerTrainingArguments`` from the defaults above, ``train.args`` and the recipe seed.

    With ``validating`` on a machine without CUDA, GPU-only precision settings are skipped, so that a GPU recipe
    validates on a laptop or CI; the train stage checks them for real."""
    import inspect

    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    from st_retrofit.distributed import is_distributed, join_process_group
    from st_retrofit.recipe import RecipeError

    accepted = inspect.signature(SentenceTransformerTrainingArguments).parameters
    for key in recipe.train.args:
        if key not in accepted:
            raise RecipeError(f"train.args.{key}", "not an argument of SentenceTransformerTrainingArguments")
        if key == "output_dir":
            raise RecipeError("train.args.output_dir", "set by the run (<run folder>/train/checkpoints); remove it")
        if key in SET_BY_MIXING:
            raise RecipeError(f"train.args.{key}", f"set by the mixing section; use {SET_BY_MIXING[key]} instead")
    kwargs = {**DEFAULT_TRAINING_ARGS, "seed": recipe.seed, **recipe.train.args}
    if is_distributed():
        join_process_group()  # before accelerate does, so that the barriers get our timeout
        if not torch.cuda.is_available():
            # Without it the trainer sees no accelerator and trains each process alone instead of with gloo DDP.
            kwargs.setdefault("use_cpu", True)
    if validating and not torch.cuda.is_available():
        kwargs = {key: value for key, value in kwargs.items() if key not in GPU_ONLY_ARGS}
    try:
        return SentenceTransformerTrainingArguments(output_dir=output_dir, **kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0]
        precision = [key for key in GPU_ONLY_ARGS if kwargs.get(key) and key in message]
        if precision:
            raise RecipeError(
                f"train.args.{precision[0]}",
                f"{message} (set --set train.args.{precision[0]}=false to train without a GPU)",
            ) from None
        raise RecipeError("train.args", message) from None


def build_model(recipe: Recipe, device: str | None = None) -> SentenceTransformer:
    """The model to train: the base model, with a fresh LoRA adapter unless ``model.lora`` is null."""
    from st_retrofit.models import load_model

    model = load_model(recipe.model.base, device=device)
    if recipe.model.max_seq_length is not None:
        model.max_seq_length = recipe.model.max_seq_length
    lora = recipe.model.lora
    if lora is not None:
        from peft import LoraConfig, TaskType

        model.add_adapter(
            LoraConfig(
                task_type=TaskType.FEATURE_EXTRACTION,
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
            )
        )
    return model


def _transformer_subfolder(model_dir: Path) -> Path:
    """The folder of the first (Transformer) module, where peft writes the adapter files."""
    modules = json.loads((model_dir / "modules.json").read_text())
    return model_dir / modules[0]["path"]


def merge_adapter(base: str, adapter_dir: str | Path, max_seq_length: int | None = None) -> SentenceTransformer:
    """Load ``base`` and merge the LoRA adapter saved in ``adapter_dir`` into its weights."""
    from peft import PeftModel

    from st_retrofit.models import load_model

    merged = load_model(base)
    transformer = merged[0]
    peft_model = PeftModel.from_pretrained(transformer.model, str(_transformer_subfolder(Path(adapter_dir))))
    transformer.model = peft_model.merge_and_unload()
    if max_seq_length is not None:
        merged.max_seq_length = max_seq_length
    # A base loaded from a folder with a README would otherwise re-save that README as the new model's card.
    merged._model_card_text = None
    return merged


def build_collator(recipe: Recipe, model: SentenceTransformer, router_mapping=None):
    """The recipe's :class:`~st_retrofit.mixing.RetrofitDataCollator` for ``model``."""
    from st_retrofit.mixing import RetrofitDataCollator

    mixing = recipe.mixing
    labels = mixing.labels
    if labels == "auto":
        # st-retrofit's losses read {"teacher_scores", "task_ids"}; any other loss gets the label column as it is.
        labels = (
            "dict" if resolve_loss_class(recipe.train.loss).__module__.startswith("st_retrofit.") else "teacher_scores"
        )
    return RetrofitDataCollator(
        model.preprocess,
        router_mapping=router_mapping or {},
        prompts=mixing.prompts,
        num_negatives=mixing.num_negatives if mixing.num_negatives is not None else recipe.mining.num_negatives,
        rank_min=mixing.rank_min,
        rank_max=mixing.rank_max,
        sampling=mixing.sampling,
        sampling_temperature=mixing.sampling_temperature,
        prompt_side=mixing.prompt_side,
        task_column=mixing.task_column,
        labels=labels,
        seed=recipe.seed,
    )


def batch_sampler(recipe: Recipe, dataset_names: list[str]):
    """The recipe's :class:`~st_retrofit.mixing.TemperatureBatchSampler`, for ``multi_dataset_batch_sampler``."""
    from st_retrofit.mixing import TemperatureBatchSampler

    mixing = recipe.mixing
    return TemperatureBatchSampler.configure(
        alpha=mixing.alpha,
        weights=mixing.weights,
        caps=mixing.caps,
        group_by=mixing.group_by,
        num_batches=mixing.num_batches,
        no_duplicates=mixing.no_duplicates,
        dataset_names=dataset_names,
    )


def train_stage(recipe: Recipe, train_dataset: str | Path, output_dir: str | Path) -> Path:
    """Train on the mined dataset (a ``Dataset``, or a ``DatasetDict`` of groups) and save the merged model under
    ``output_dir/model``.

    ``output_dir/checkpoints`` holds trainer checkpoints; if one exists the run resumes from it.
    ``output_dir/adapter`` holds the LoRA adapter (when LoRA is on).
    """
    from datasets import DatasetDict, load_from_disk
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_utils import get_last_checkpoint

    from st_retrofit.mixing import MixingCallback, MixingSettingError
    from st_retrofit.mixing.report import write_mixture_report
    from st_retrofit.recipe import RecipeError

    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    args = training_arguments(recipe, output_dir=str(checkpoints))
    dataset = load_from_disk(str(train_dataset))
    if not isinstance(dataset, DatasetDict):
        dataset = DatasetDict({"train": dataset})
    # One split per mining group; the sampler draws every batch from one group (mixing.group_by).
    dataset = DatasetDict({name: split for name, split in dataset.items() if len(split)})
    if not dataset:
        raise ValueError(f"{train_dataset}: every split is empty; nothing to train on")
    args.multi_dataset_batch_sampler = batch_sampler(recipe, list(dataset))
    model = build_model(recipe)
    loss = resolve_loss_class(recipe.train.loss)(model, **recipe.train.loss_kwargs)
    collator = build_collator(recipe, model, args.router_mapping)
    mixing = MixingCallback()

    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, data_collator=collator, callbacks=[mixing]
    )
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        logger.info("Resuming training from %s", last)
    try:
        result = trainer.train(resume_from_checkpoint=last)
    except MixingSettingError as exc:  # raised while the first dataloader is built, before any step
        raise RecipeError(f"mixing.{exc.key}", exc.message) from None
    model_dir = output_dir / "model"
    if not trainer.is_world_process_zero():
        # Under a distributed launch, the main process exports; the others are done once the trainer is.
        return model_dir
    metrics = {**result.metrics, "world_size": args.world_size}
    (output_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    if mixing.sampler is not None:
        write_mixture_report(mixing.sampler, collator, output_dir, args.dataloader_num_workers)

    if model_dir.exists():
        shutil.rmtree(model_dir)
    if recipe.model.lora is not None:
        adapter_dir = output_dir / "adapter"
        model.save_pretrained(str(adapter_dir))
        merged = merge_adapter(recipe.model.base, adapter_dir, recipe.model.max_seq_length)
        merged.prompts = dict(model.prompts)  # with the training prompts MixingCallback saved
        # The merged model is the trained one: keep the trainer's card (data, loss, mixing, training logs).
        merged.model_card_data = model.model_card_data
        merged.model_card_data.register_model(merged)
        merged.save_pretrained(str(model_dir))
    else:
        model.save_pretrained(str(model_dir))
    logger.info("Saved the retrofitted model to %s", model_dir)
    return model_dir
