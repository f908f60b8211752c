"""The ``train`` stage: contrastive training with the stock ``SentenceTransformerTrainer``, LoRA optional.

The model is resolved from the recipe (:func:`st_retrofit.models.load_model`), an adapter is attached through
sentence-transformers' own peft integration, the loss is built from its class name, batches are drawn by
:class:`~st_retrofit.mixing.TemperatureBatchSampler` and collated by
:class:`~st_retrofit.mixing.RetrofitDataCollator` (recipe section ``mixing``), and training resumes from the last
checkpoint when a run was interrupted. At export the adapter is merged into the base weights, so the saved model
is a plain sentence-transformers folder that needs neither peft nor st-retrofit to load.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.config import ConfigError, keyed
from st_retrofit.runfolder import MINED_UNLABELED, MINING_REPORT

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from st_retrofit.config import SectionView
    from st_retrofit.train.config import TrainConfig

logger = logging.getLogger(__name__)


def build_loss(config: TrainConfig, model: SentenceTransformer):
    """The recipe's loss: ``train.loss``, summed with ``train.losses`` on one forward pass (``WeightedLossSum``)
    when there are any, wrapped in sentence-transformers' ``MatryoshkaLoss`` when ``matryoshka_dims`` is set (a
    loss that can return its components returns their sum there: MatryoshkaLoss weighs one tensor per size)."""
    kwargs = dict(config.loss_kwargs)
    loss_class = config.loss_class()
    loss = loss_class(model, **kwargs)
    if config.losses:
        from st_retrofit.losses import WeightedLossSum

        terms = [(loss, 1.0)] + [(term.loss_class()(model, **term.kwargs), term.weight) for term in config.losses]
        loss = WeightedLossSum(model, terms, return_components=not config.matryoshka_dims)
    if not config.matryoshka_dims:
        return loss
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    size = model.get_embedding_dimension()
    if size is not None and config.matryoshka_dims[0] > size:
        raise ConfigError(
            "train.matryoshka_dims",
            f"the model's embeddings have {size} dimensions; {config.matryoshka_dims[0]} is more",
        )
    if hasattr(loss, "return_components"):
        loss.return_components = False  # MatryoshkaLoss weighs one tensor per size
    return MatryoshkaLoss(model, loss, config.matryoshka_dims, config.matryoshka_weights)


def build_model(recipe: SectionView, device: str | None = None) -> SentenceTransformer:
    """The model to train: the base model, with a fresh LoRA adapter unless ``model.lora`` is null."""
    from st_retrofit.models.resolve import load_model

    with keyed("model.base"):
        model = load_model(recipe.model.base, device=device)
    if recipe.model.max_seq_length is not None:
        model.max_seq_length = recipe.model.max_seq_length
    lora = recipe.model.lora
    if lora is not None:
        from st_retrofit.models.config import check_peft

        with keyed("model.lora"):
            check_peft()
        from peft import LoraConfig, TaskType
        from transformers import set_seed

        # The adapter's initial weights are random: drawn from the recipe's seed, so that a LoRA run repeats bit
        # for bit (the trainer seeds only later, when the adapter already exists).
        set_seed(recipe.seed)
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
    from st_retrofit.extras import require_module

    PeftModel = require_module("peft", "merging a LoRA adapter").PeftModel

    from st_retrofit.models.resolve import load_model

    merged = load_model(base)
    transformer = merged[0]
    peft_model = PeftModel.from_pretrained(transformer.model, str(_transformer_subfolder(Path(adapter_dir))))
    transformer.model = peft_model.merge_and_unload()
    if max_seq_length is not None:
        merged.max_seq_length = max_seq_length
    # A base loaded from a folder with a README would otherwise re-save that README as the new model's card.
    merged._model_card_text = None
    return merged


def needs_teacher_embeddings(config: TrainConfig) -> bool:
    """Whether a loss of the recipe (``train.loss``, a ``train.losses`` term or ``train.corpus_distillation``)
    reads the teacher's embeddings."""
    from st_retrofit.losses.labels import reads_teacher_embeddings

    terms = [*config.losses, *([config.corpus_distillation] if config.corpus_distillation else [])]
    classes = [config.loss_class(), *(term.loss_class() for term in terms)]
    return any(reads_teacher_embeddings(cls) for cls in classes)


def build_corpus_distillation(config: TrainConfig, model: SentenceTransformer, teacher, rows, seed: int):
    """The ``train.corpus_distillation`` loss for the unlabeled rows' batches, as a one-term ``WeightedLossSum``
    (its weight, and its entry of the collator's labels). A loss taking ``teacher_dim`` gets the teacher's size
    unless the recipe sets it; one with a ``fit`` (``OrthogonalEmbedDistillLoss``) starts from both models'
    embeddings of up to :data:`FIT_ROWS` of the rows (queries and documents), drawn with the seed."""
    import numpy as np

    from st_retrofit.losses import WeightedLossSum
    from st_retrofit.models.resolve import role_prompt

    term = config.corpus_distillation
    loss_class = term.loss_class()
    kwargs = dict(term.kwargs)
    if "teacher_dim" in inspect.signature(loss_class).parameters:
        kwargs.setdefault("teacher_dim", teacher.dim)
    try:
        loss = loss_class(model, **kwargs)
    except ValueError as exc:
        raise ConfigError("train.corpus_distillation", str(exc)) from None
    if hasattr(loss, "fit"):
        sample = rows.shuffle(seed=seed).select(range(min(FIT_ROWS, len(rows))))
        student, targets = [], []
        for role in ("query", "document"):
            texts = list(sample[role])
            encode = model.encode_query if role == "query" else model.encode_document
            student.append(encode(texts, prompt=role_prompt(model, role), normalize_embeddings=True,
                                  convert_to_numpy=True, batch_size=32))  # fmt: skip
            targets.append(teacher.lookup(texts, role).astype(np.float32))
        loss.fit(np.concatenate(student), np.concatenate(targets))
    return WeightedLossSum(model, [(loss, term.weight)])


def unlabeled_rows(mined: Path, groups: list[str]):
    """The unlabeled corpus rows the teacher encoded (the mine stage's ``unlabeled/``), for
    ``train.corpus_distillation``.

    Raises:
        ConfigError: the mine stage encoded none, or a mining group has the split's name.
    """
    from datasets import load_from_disk

    folder = MINED_UNLABELED.inside(mined.parent)
    if not folder.is_dir():
        raise ConfigError(
            "train.corpus_distillation",
            f"{folder} is missing: the mine stage encoded no unlabeled rows; set mining.unlabeled_per_language and "
            "run the mine stage again",
        )
    if UNLABELED_SPLIT in groups:
        raise ConfigError(
            "mining.group_by", f"a group is called {UNLABELED_SPLIT!r}, the name of the unlabeled rows' split"
        )
    return load_from_disk(str(folder))


FIT_ROWS = 1024  # rows whose two texts start the projection: 2,048 points fix a 384-d rotation well
UNLABELED_SPLIT = "unlabeled"  # the training split of the unlabeled rows, beside the mined groups


def teacher_embeddings(recipe: SectionView, mined: Path):
    """The mining run's teacher embeddings (:class:`~st_retrofit.mining.cache.TeacherEmbeddings`), for the losses
    that distil them.

    Raises:
        ConfigError: mining is off, or its cache no longer holds them.
    """
    from st_retrofit.mining.cache import TeacherEmbeddings

    report = MINING_REPORT.inside(mined.parent)
    if not recipe.mining.enabled or not report.is_file():
        raise ConfigError(
            "train.losses", "distilling the teacher's embeddings needs the miner's cache of them; turn mining on"
        )
    try:
        return TeacherEmbeddings.from_mining_report(json.loads(report.read_text()))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("train.losses", f"TeacherEmbeddingLoss: {exc}") from None


def check_teacher_dimensions(config: TrainConfig, student_dim: int | None, teacher_dim: int | None) -> None:
    """An embedding-matching loss (``EmbedDistillLoss``, ``MSELoss``; in ``train.losses`` or as
    ``train.corpus_distillation``) compares the student's vectors with the teacher's one by one, so their sizes must
    agree: through a learned projection (``projection_dim``) when the teacher is wider or narrower.
    ``TeacherEmbeddingLoss`` compares rankings and takes any sizes; a loss that takes ``teacher_dim``
    (``OrthogonalEmbedDistillLoss``) makes its own projection."""
    from st_retrofit.losses.labels import label_key

    if student_dim is None or teacher_dim is None or student_dim == teacher_dim:
        return
    terms = [(f"train.losses[{i}]", term) for i, term in enumerate(config.losses)]
    if config.corpus_distillation is not None:
        terms.append(("train.corpus_distillation", config.corpus_distillation))
    for key, term in terms:
        parameters = inspect.signature(term.loss_class()).parameters
        if label_key(term.loss_class()) != "teacher_embeddings" or "teacher_dim" in parameters:
            continue
        projection = term.kwargs.get("projection_dim")
        if projection == teacher_dim:
            continue
        fix = (
            f"set {key}.kwargs.projection_dim: {teacher_dim} (a learned projection into the teacher's space)"
            if "projection_dim" in parameters
            else "use EmbedDistillLoss with projection_dim"
        )
        got = f"projection_dim {projection} is not" if projection is not None else "the student has"
        raise ConfigError(
            key,
            f"{term.loss} matches embeddings one by one: the teacher's have {teacher_dim} dimensions, {got} "
            f"{student_dim if projection is None else teacher_dim}; {fix}, or TeacherEmbeddingLoss (its in-batch "
            "ranking, any dimensions)",
        )


def build_collator(recipe: SectionView, model: SentenceTransformer, router_mapping=None, teacher=None):
    """The recipe's :class:`~st_retrofit.mixing.RetrofitDataCollator` for ``model`` (``teacher``: the
    :class:`~st_retrofit.mining.cache.TeacherEmbeddings` a loss distils)."""
    from st_retrofit.mixing import RetrofitDataCollator

    mixing = recipe.mixing
    return RetrofitDataCollator.from_config(
        model.preprocess,
        mixing,
        loss=recipe.train.loss_class(),
        router_mapping=router_mapping or {},
        num_negatives=mixing.num_negatives if mixing.num_negatives is not None else recipe.mining.num_negatives,
        seed=recipe.seed,
        # The teacher's embeddings travel in the labels dict.
        **({"labels": "dict", "teacher_embeddings": teacher} if teacher is not None else {}),
    )


def batch_sampler(recipe: SectionView, dataset_names: list[str]):
    """The recipe's :class:`~st_retrofit.mixing.TemperatureBatchSampler`, for ``multi_dataset_batch_sampler``."""
    from st_retrofit.mixing import TemperatureBatchSampler

    return TemperatureBatchSampler.from_config(recipe.mixing, dataset_names=dataset_names)


def write_dev_curve(state, output_dir: Path) -> dict[str, Any]:
    """The dev score at every evaluation, the checkpoint kept, in ``train_metrics.json`` and ``dev_curve.png``."""
    curve = [(e["step"], e["eval_sequential_score"]) for e in state.log_history if "eval_sequential_score" in e]
    kept = state.best_model_checkpoint
    summary = {"mean_ndcg@10": dict(curve), "kept": Path(kept).name if kept else None, "best": state.best_metric}
    from st_retrofit.extras import pyplot

    plt = pyplot("dev_curve.png")
    if plt is not None and curve:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot([s for s, _ in curve], [v for _, v in curve], marker="o")
        if kept:
            step = int(Path(kept).name.split("-")[-1])
            axis.axvline(step, linestyle="--", color="gray", label=f"kept: step {step}")
            axis.legend()
        axis.set(xlabel="step", ylabel="dev mean nDCG@10", title="Dev score during training")
        figure.tight_layout()
        figure.savefig(output_dir / "dev_curve.png", dpi=120)
        plt.close(figure)
    logger.info("Dev mean nDCG@10 by step: %s; kept %s", summary["mean_ndcg@10"], summary["kept"])
    return summary


def train_stage(recipe: SectionView, train_dataset: str | Path, output_dir: str | Path) -> Path:
    """Train on the mined dataset (a ``Dataset``, or a ``DatasetDict`` of groups) and save the merged model under
    ``output_dir/model``.

    ``output_dir/checkpoints`` holds trainer checkpoints; if one exists the run resumes from it.
    ``output_dir/adapter`` holds the LoRA adapter (when LoRA is on).
    """
    from datasets import DatasetDict, load_from_disk
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.utils import logging as transformers_logging

    from st_retrofit.mixing import MixingCallback
    from st_retrofit.mixing.report import write_mixture_report
    from st_retrofit.train.loss_state import (
        LOSS_PARAMETERS,
        LossParametersCallback,
        loss_parameters,
        restore_loss_parameters,
    )

    # transformers' own deprecation, raised from inside sentence-transformers at every step and save; not ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    with keyed("train"):
        args = recipe.train.training_arguments(output_dir=str(checkpoints), seed=recipe.seed)
    dataset = load_from_disk(str(train_dataset))
    if not isinstance(dataset, DatasetDict):
        dataset = DatasetDict({"train": dataset})
    # One split per mining group; the sampler draws every batch from one group (mixing.group_by).
    dataset = DatasetDict({name: split for name, split in dataset.items() if len(split)})
    if not dataset:
        raise ValueError(f"{train_dataset}: every split is empty; nothing to train on")
    unlabeled = None
    if recipe.train.corpus_distillation is not None:
        unlabeled = unlabeled_rows(Path(train_dataset), list(dataset))
        dataset[UNLABELED_SPLIT] = unlabeled.select_columns(["query", "document"])
    rows, per_device = sum(len(split) for split in dataset.values()), args.per_device_train_batch_size
    if per_device * args.world_size > rows:  # no batch could be formed: the trainer would take no step
        processes = f" x {args.world_size} processes" if args.world_size > 1 else ""
        raise ConfigError(
            "train.args.per_device_train_batch_size",
            f"{per_device}{processes} is more than the {rows} training rows; set it to at most "
            f"{rows // args.world_size}",
        )
    args.multi_dataset_batch_sampler = batch_sampler(recipe, list(dataset))
    model = build_model(recipe)
    loss = build_loss(recipe.train, model)
    teacher = teacher_embeddings(recipe, Path(train_dataset)) if needs_teacher_embeddings(recipe.train) else None
    if teacher is not None:
        check_teacher_dimensions(recipe.train, model.get_embedding_dimension(), teacher.dim)
    if unlabeled is not None:
        # The pairs' groups train the recipe's loss; the unlabeled rows' batches the distillation alone.
        distillation = build_corpus_distillation(recipe.train, model, teacher, unlabeled, recipe.seed)
        loss = {name: loss for name in dataset if name != UNLABELED_SPLIT} | {UNLABELED_SPLIT: distillation}
    collator = build_collator(recipe, model, args.router_mapping, teacher)
    mixing = MixingCallback()
    callbacks: list = [mixing]
    own_parameters = bool(loss_parameters(loss, model))
    if own_parameters:
        callbacks.append(LossParametersCallback(loss, model))

    evaluator = None
    if recipe.train.dev_tasks:
        from st_retrofit.evaluation.heldout import dev_evaluator

        evaluator = dev_evaluator(recipe.train.dev_tasks, batch_size=args.per_device_eval_batch_size)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, data_collator=collator, callbacks=callbacks,
        evaluator=evaluator,
    )  # fmt: skip
    # A "Writing model shards" bar per checkpoint, nested in the training bar, prints escape codes into log files.
    transformers_logging.disable_progress_bar()
    last = last_complete_checkpoint(checkpoints, LOSS_PARAMETERS if own_parameters else None)
    if last and finished_checkpoint(last):
        # The run reached its last step and failed after (the final save): the checkpoint is the trained model.
        # transformers would resume it and take one more step past max_steps.
        from transformers import TrainerState

        logger.info("Training finished at %s; exporting it without training further", last)
        trainer._load_from_checkpoint(last)
        trainer.state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
        result = finished_result(trainer.state)
    else:
        if last:
            logger.info("Resuming training from %s", last)
            restore_loss_parameters(loss, model, last)
        with keyed("mixing"):  # a mixing setting, raised while the first dataloader is built, before any step
            result = trainer.train(resume_from_checkpoint=last)
        if last:  # transformers averages the loss over the resumed steps only
            result = finished_result(trainer.state, result.metrics)
    model_dir = output_dir / "model"
    if not trainer.is_world_process_zero():
        # Under a distributed launch, the main process exports; the others are done once the trainer is.
        return model_dir
    metrics = {**result.metrics, "world_size": args.world_size}
    if evaluator is not None:
        metrics["dev"] = write_dev_curve(trainer.state, output_dir)
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
    if recipe.merge.enabled:
        merge_trained_model(recipe, output_dir, trainer.state.global_step)
    return model_dir


def last_complete_checkpoint(checkpoints: Path, written_after: str | None = None) -> str | None:
    """The newest checkpoint the trainer finished writing, or ``None``. ``trainer_state.json`` is the last file
    transformers writes into one (after the weights, optimizer and RNG states), so a process killed or interrupted
    while saving leaves a folder without it, or with it cut short; such a folder is removed, so that neither the
    resume nor the trainer's checkpoint rotation takes it (found by ``tests/test_fault_injection.py``).
    ``written_after``: a file a callback writes after the trainer's own (the loss's parameters), required too."""
    if not checkpoints.is_dir():
        return None
    steps = {int(p.name.removeprefix("checkpoint-")): p for p in checkpoints.glob("checkpoint-*") if p.is_dir()
             and p.name.removeprefix("checkpoint-").isdigit()}  # fmt: skip
    for step in sorted(steps, reverse=True):
        try:
            json.loads((steps[step] / "trainer_state.json").read_text())
            if written_after and not (steps[step] / written_after).is_file():
                raise FileNotFoundError(written_after)
        except (OSError, ValueError):
            logger.warning("Removing %s: the run stopped while saving it", steps[step])
            shutil.rmtree(steps[step])
            continue
        return str(steps[step])
    return None


def finished_checkpoint(checkpoint: str | Path) -> bool:
    """Whether a trainer checkpoint is the run's last step (``global_step`` at the ``max_steps`` it planned)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def finished_result(state: Any, metrics: dict | None = None) -> Any:
    """What ``Trainer.train`` returns, over the whole run from a finished run's state: ``train_loss`` is the mean of
    every logged loss, each weighted by the steps it covers, so a run resumed from a checkpoint reports the whole
    run and not its resumed tail. ``metrics``: the other ``train_*`` figures (default: the last ones logged)."""
    from transformers.trainer_utils import TrainOutput

    total, steps = 0.0, 0
    for entry in state.log_history:
        if "loss" in entry:
            total, steps = total + entry["loss"] * (entry["step"] - steps), entry["step"]
    if metrics is None:
        metrics = next((entry for entry in reversed(state.log_history) if "train_loss" in entry), {})
    metrics = {k: v for k, v in metrics.items() if k.startswith("train_")}
    metrics["train_loss"] = total / steps if steps else float("nan")
    return TrainOutput(state.global_step, metrics["train_loss"], metrics)


def checkpoint_models(recipe: SectionView, output_dir: Path, count: int, final_step: int) -> list[str]:
    """The run's last ``count`` trainer checkpoints before its final step, as model folders (a LoRA checkpoint is
    merged into the base once, under ``checkpoint-models/``).

    Raises:
        ConfigError: the run kept fewer checkpoints.
    """

    found = sorted(output_dir.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2]))
    earlier = [p for p in found if int(p.name.rpartition("-")[2]) < final_step][-count:]
    if len(earlier) < count:
        raise ConfigError(
            "merge.checkpoints",
            f"{count} asked, but the run kept {len(earlier)} checkpoints before its last step; raise "
            f"train.args.save_total_limit to {count + 1} or more, or save more often (save_steps)",
        )
    if recipe.model.lora is None:
        return [str(p) for p in earlier]
    folders = []
    for checkpoint in earlier:
        target = output_dir / "checkpoint-models" / checkpoint.name
        if not target.is_dir():
            merge_adapter(recipe.model.base, checkpoint, recipe.model.max_seq_length).save_pretrained(str(target))
        folders.append(str(target))
    return folders


def merge_trained_model(recipe: SectionView, output_dir: Path, final_step: int) -> Path:
    """Merge ``output_dir/model`` with the ingredients of the recipe's ``merge`` section; the unmerged model moves
    to ``output_dir/unmerged``, the merged one takes its place (with ``merge.json``)."""
    from st_retrofit.merge.config import BASE
    from st_retrofit.merge.folders import merge_folders
    from st_retrofit.merge.methods import MERGE_METHODS

    config = recipe.merge
    unmerged = output_dir / "unmerged"
    if unmerged.exists():
        shutil.rmtree(unmerged)
    (output_dir / "model").rename(unmerged)
    checkpoints = checkpoint_models(recipe, output_dir, config.checkpoints, final_step)
    others = [recipe.model.base if name == BASE else name for name in config.models]
    names = ["trained", *(Path(p).name for p in checkpoints), *config.models]
    return merge_folders(
        [str(unmerged), *checkpoints, *others], output_dir / "model", config.method, config.weights,
        recipe.model.base if MERGE_METHODS[config.method].uses_base else None, config.t, config.density, names=names,
        parameters=config.parameters,
    )  # fmt: skip
