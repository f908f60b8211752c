"""Recipe section ``train``: the loss and the arguments of the stock ``SentenceTransformerTrainer``.

The trainer-argument check builds ``SentenceTransformerTrainingArguments`` itself, so its own types and ranges
apply; it imports sentence-transformers (and so torch) only when the recipe is checked, never at import.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, model_validator

from st_retrofit.config import MAX_COUNT, ConfigError, ConfigModel, did_you_mean, keyed, require

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformerTrainingArguments

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

# Ranges the trainer's argument class does not check itself (a batch of 0 fails only at the first step).
ARG_BOUNDS: dict[str, tuple[str, float]] = {
    "per_device_train_batch_size": (">=", 1),
    "per_device_eval_batch_size": (">=", 1),
    "gradient_accumulation_steps": (">=", 1),
    "learning_rate": (">=", 0),
    "num_train_epochs": (">", 0),
    "warmup_steps": (">=", 0),
    "weight_decay": (">=", 0),
    "logging_steps": (">", 0),
    "save_steps": (">", 0),
    "save_total_limit": (">=", 1),
    "dataloader_num_workers": (">=", 0),
}

# Precision settings that only a GPU can check; validation on a machine without one leaves them to the train stage.
GPU_ONLY_ARGS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def resolve_loss_class(name: str) -> type:
    """The loss class called ``name`` in ``st_retrofit.losses`` or ``sentence_transformers.sentence_transformer.losses``."""
    from sentence_transformers.sentence_transformer import losses

    from st_retrofit import losses as retrofit_losses

    # WeightedLossSum is built from train.losses, not named as train.loss.
    ours = [n for n in retrofit_losses.__all__ if n != "WeightedLossSum"]
    loss_class = (getattr(retrofit_losses, name) if name in ours else None) or getattr(losses, name, None)
    if not isinstance(loss_class, type):
        known = ours + sorted(n for n in dir(losses) if n.endswith("Loss"))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError("loss", f"unknown loss {name!r}{hint}; known losses: {', '.join(known)}")
    return loss_class


class LossTerm(ConfigModel):
    """One more loss added to ``train.loss`` (an entry of ``train.losses``).

    Args:
        loss: a loss class name, as ``train.loss`` (``GlobalOrthogonalRegularizationLoss`` for the spread-out
            regularizer, ``MultipleNegativesRankingLoss`` with ``hardness_mode`` for hardness weighting...).
        weight: its weight in the sum (``train.loss`` has weight 1).
        kwargs: its keyword arguments (besides the model).
    """

    loss: str = Field(description="Loss class name.")
    weight: float = Field(1.0, ge=0, description="Weight in the sum.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Loss keyword arguments.")

    def loss_class(self) -> type:
        try:
            return resolve_loss_class(self.loss)
        except ConfigError as exc:
            raise ConfigError("loss", exc.message) from None


# Documented ranges of loss arguments, by name, for every loss that takes one (sentence-transformers' and ours): a
# temperature or scale of 0 divides by zero, a negative weight or margin inverts what the term does. Checked when the
# recipe is read, so that `scale: 0` stops `validate` instead of the train stage after synth and mine have run.
LOSS_ARG_BOUNDS: dict[str, tuple[str, float]] = {
    "scale": (">", 0),
    "max_scale": (">", 0),
    "temperature": (">", 0),
    "student_temperature": (">", 0),
    "teacher_temperature": (">", 0),
    "distill_temperature": (">", 0),
    "teacher_scale": (">", 0),
    "distill_weight": (">=", 0),
    "false_negative_margin": (">=", 0),
    "teacher_margin": (">=", 0),
    "hardness_strength": (">=", 0),
    "mini_batch_size": (">=", 1),
    "mini_batch_num_tokens": (">=", 1),
    "projection_dim": (">=", 1),
}


def check_loss_kwargs(loss_class: type, kwargs: dict[str, Any], key: str) -> None:
    """Every key of ``kwargs`` is an argument of ``loss_class`` (besides the model), of the type its signature
    declares (where that is a plain type: numbers, flags, names, lists of them) and within :data:`LOSS_ARG_BOUNDS`."""
    accepted = [name for name in inspect.signature(loss_class).parameters if name != "model"]
    hints = _loss_argument_types(loss_class)
    for name, value in kwargs.items():
        if name not in accepted:
            hint = did_you_mean(name, accepted, "it takes")
            raise ConfigError(f"{key}.{name}", f"not an argument of {loss_class.__name__}{hint}")
        check_value(f"{key}.{name}", value, hints.get(name), LOSS_ARG_BOUNDS.get(name))


def check_value(key: str, value: Any, annotation: Any = None, bound: tuple[str, float] | None = None) -> None:
    """``value`` has the type ``annotation`` (strictly, as a recipe's own keys: ``"5%"`` is no number; a YAML list
    stands for a tuple) and lies within ``bound`` (``(">", 0)``). An annotation pydantic cannot check (a model, a
    module, a callable: nothing a recipe can spell) is skipped.

    Raises:
        ConfigError: ``key``.
    """
    from pydantic import TypeAdapter, ValidationError

    from st_retrofit.config import describe_type

    if annotation is not None and value is not None:
        try:
            adapter = TypeAdapter(annotation)
        except Exception:
            adapter = None
        if adapter is not None:
            try:
                adapter.validate_python(value, strict=not isinstance(value, list))
            except ValidationError:
                raise ConfigError(key, f"expected {describe_type(annotation)}, got {value!r}") from None
    if bound is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        op, limit = bound
        if not (value >= limit if op == ">=" else value > limit):
            raise ConfigError(key, f"expected {op} {limit:g}, got {value!r}")


@functools.cache
def _loss_argument_types(loss_class: type) -> dict[str, Any]:
    """The resolved annotations of a loss's arguments; those that do not resolve (names imported only for type
    checking) are left out, and so unchecked."""
    import typing

    try:
        return typing.get_type_hints(loss_class.__init__)
    except Exception:
        out = {}
        for name, parameter in inspect.signature(loss_class).parameters.items():
            if isinstance(parameter.annotation, type):
                out[name] = parameter.annotation
        return out


class TrainConfig(ConfigModel):
    """Contrastive training through the stock ``SentenceTransformerTrainer`` (recipe section ``train``).

    Args:
        loss: a loss class name from ``st_retrofit.losses`` (``RetrofitInfoNCELoss``, ``CachedRetrofitInfoNCELoss``)
            or ``sentence_transformers.sentence_transformer.losses``. The mined dataset carries the teacher's
            scores as its ``label`` column, which ``RetrofitInfoNCELoss`` uses for teacher masking and distillation.
        loss_kwargs: keyword arguments for the loss (besides the model).
        args: keyword arguments for ``SentenceTransformerTrainingArguments`` (``output_dir`` is set by the run).
        dev_tasks: BEIR folders (or folders of them) whose mean nDCG@10, measured by sentence-transformers'
            ``InformationRetrievalEvaluator`` every ``select_every`` steps, picks the checkpoint the stage keeps (a
            guard against a run that gets worse); empty = the last step is kept.
        select_every: steps between dev evaluations (and checkpoints) when ``dev_tasks`` is set.
        matryoshka_dims: embedding sizes to train at once, largest first (``[384, 256, 128, 64]``): the loss is
            wrapped in sentence-transformers' ``MatryoshkaLoss``, so that the model still works with its embeddings
            cut to any of them (``SentenceTransformer(..., truncate_dim=128)``). Empty = the full size only.
        matryoshka_weights: the weight of each size in ``matryoshka_dims`` (default: 1 each).
        losses: more losses added to ``loss`` with weights, on the same forward pass (``WeightedLossSum``): the
            library's spread-out regularizer or a hardness-weighted MNRL term beside ``RetrofitInfoNCELoss``.
        corpus_distillation: a loss that distils the teacher's embeddings (``OrthogonalEmbedDistillLoss``, or the
            library's ``EmbedDistillLoss`` with ``projection_dim``), trained on the unlabeled corpus rows the teacher
            encoded (``mining.unlabeled_per_language``) in batches of their own, drawn beside the pairs' batches by
            the mixing sampler; ``weight`` scales it. It teaches from every document, not only those the templates
            made a pair of. ``null``: off.
    """

    loss: str = Field("MultipleNegativesRankingLoss", description="Loss class name.")
    loss_kwargs: dict[str, Any] = Field(default_factory=dict, description="Loss keyword arguments.")
    args: dict[str, Any] = Field(default_factory=dict, description="SentenceTransformerTrainingArguments.")
    dev_tasks: list[str] = Field(
        default_factory=list,
        json_schema_extra={"local_path": True},
        description="BEIR folders that pick the kept checkpoint.",
    )
    select_every: int = Field(20, ge=1, description="Steps between dev evaluations.")
    matryoshka_dims: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="Embedding sizes trained at once (MatryoshkaLoss), largest first."
    )
    matryoshka_weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="Weight of each Matryoshka size."
    )

    losses: list[LossTerm] = Field(default_factory=list, description="More weighted losses added to loss.")
    corpus_distillation: LossTerm | None = Field(
        None, description="Teacher-embedding loss on the unlabeled corpus rows, in batches of their own."
    )

    @model_validator(mode="after")
    def _check_matryoshka(self) -> TrainConfig:
        dims = self.matryoshka_dims
        require(
            dims == sorted(set(dims), reverse=True),
            "matryoshka_dims",
            f"expected distinct sizes, largest first (e.g. [384, 256, 128]), got {dims}",
        )
        require(
            self.matryoshka_weights is None or len(self.matryoshka_weights) == len(dims),
            "matryoshka_weights",
            f"expected one weight per size in matryoshka_dims ({len(dims)}), got {self.matryoshka_weights}",
        )
        return self

    def local_inputs(self) -> list[str]:
        return list(self.dev_tasks)

    def loss_class(self) -> type:
        return resolve_loss_class(self.loss)

    def check_environment(self) -> None:
        """The loss exists and takes ``loss_kwargs``; ``args`` build ``SentenceTransformerTrainingArguments``."""
        check_loss_kwargs(self.loss_class(), self.loss_kwargs, "loss_kwargs")
        if self.losses and not hasattr(self.loss_class(), "compute_loss_from_embeddings"):
            # A gradient-caching loss embeds in mini-batches of its own: the other terms cannot read that pass.
            raise ConfigError(
                "losses",
                f"{self.loss} cannot share its forward pass with more losses; use "
                f"{self.loss.removeprefix('Cached')} as train.loss (without mini_batch_size) to add them",
            )
        for i, term in enumerate(self.losses):
            with keyed(f"losses[{i}]"):
                loss_class = term.loss_class()
            if not hasattr(loss_class, "compute_loss_from_embeddings"):
                raise ConfigError(
                    f"losses[{i}].loss", f"{term.loss} cannot share a forward pass (no compute_loss_from_embeddings)"
                )
            check_loss_kwargs(loss_class, term.kwargs, f"losses[{i}].kwargs")
        if self.corpus_distillation is not None:
            from st_retrofit.losses.labels import reads_teacher_embeddings

            term = self.corpus_distillation
            with keyed("corpus_distillation"):
                loss_class = term.loss_class()
            if not reads_teacher_embeddings(loss_class):
                raise ConfigError(
                    "corpus_distillation.loss",
                    f"{term.loss} does not read the teacher's embeddings, and unlabeled rows have nothing else to "
                    "learn from; use OrthogonalEmbedDistillLoss, or EmbedDistillLoss with projection_dim",
                )
            check_loss_kwargs(loss_class, term.kwargs, "corpus_distillation.kwargs")
        self.training_arguments(output_dir="checkpoints", seed=0, validating=True)
        from st_retrofit.evaluation.heldout import beir_folders

        for i, path in enumerate(self.dev_tasks):
            if not Path(path).expanduser().is_dir() or not beir_folders([path]):
                raise ConfigError(f"dev_tasks[{i}]", f"{path} is neither a BEIR folder nor a folder of them")

    def check_with_sections(self, mining: Any, merge: Any) -> None:
        """Rules between this section and the others the train stage reads (keys are full paths): distilling the
        teacher's embeddings needs mining (and, on the unlabeled corpus, the teacher's encoding of it), and merging
        N checkpoints needs the trainer to keep N + 1."""
        from st_retrofit.losses.labels import reads_teacher_embeddings

        if not mining.enabled and any(reads_teacher_embeddings(t.loss_class()) for t in self.losses):
            raise ConfigError(
                "train.losses", "distilling the teacher's embeddings needs the miner's cache of them; turn mining on"
            )
        if self.corpus_distillation is not None and (not mining.enabled or mining.unlabeled_per_language == 0):
            raise ConfigError(
                "train.corpus_distillation",
                "the teacher has encoded no unlabeled corpus rows; set mining.unlabeled_per_language (null for all, "
                "or a count per language) with mining on",
            )
        keep = self.args.get("save_total_limit")
        if merge.enabled and merge.checkpoints and keep is not None and keep < merge.checkpoints + 1:
            raise ConfigError(
                "merge.checkpoints",
                f"{merge.checkpoints} checkpoints before the last, but train.args.save_total_limit keeps {keep} in "
                f"all; raise it to {merge.checkpoints + 1}",
            )

    def training_arguments(
        self, output_dir: str, seed: int, validating: bool = False
    ) -> SentenceTransformerTrainingArguments:
        """``SentenceTransformerTrainingArguments`` from the defaults above, ``args`` and the recipe seed.

        With ``validating``, nothing joins a process group, and on a machine without CUDA the GPU-only precision
        settings are skipped, so that a GPU recipe validates on a laptop or CI; the train stage checks them for real.
        """
        import torch
        from sentence_transformers import SentenceTransformerTrainingArguments

        from st_retrofit.distributed import is_distributed, join_process_group

        accepted = inspect.signature(SentenceTransformerTrainingArguments).parameters
        for key, value in self.args.items():
            if key not in accepted:
                raise ConfigError(f"args.{key}", "not an argument of SentenceTransformerTrainingArguments")
            if key == "output_dir":
                raise ConfigError("args.output_dir", "set by the run (<run folder>/train/checkpoints); remove it")
            if key in SET_BY_MIXING:
                raise ConfigError(f"args.{key}", f"set by the mixing section; use {SET_BY_MIXING[key]} instead")
            _check_argument_value(SentenceTransformerTrainingArguments, key, value)
        # Pinned memory only helps a copy to an accelerator (and warns at every run without one).
        kwargs = {**DEFAULT_TRAINING_ARGS, "seed": seed, "dataloader_pin_memory": _has_accelerator(), **self.args}
        if self.dev_tasks:  # evaluate and checkpoint together, and keep the best checkpoint at the end
            kwargs |= {"eval_strategy": "steps", "eval_steps": self.select_every, "save_strategy": "steps",
                       "save_steps": self.select_every, "load_best_model_at_end": True,
                       "metric_for_best_model": "sequential_score", "greater_is_better": True}  # fmt: skip
        if is_distributed() and not validating:
            join_process_group()  # before accelerate does, so that the barriers get our timeout
            if not torch.cuda.is_available():
                # Without it the trainer sees no accelerator and trains each process alone instead of with gloo DDP.
                kwargs.setdefault("use_cpu", True)
        if validating and not torch.cuda.is_available():
            # A recipe is often checked on a laptop and run on a GPU machine: say so once, refuse only at train time.
            for key in [key for key in GPU_ONLY_ARGS if kwargs.get(key)]:
                logger.warning(
                    "train.args.%s needs a GPU and this machine has none: the train stage will refuse it here "
                    "(--set train.args.%s=false); fine where the run trains on a GPU",
                    key,
                    key,
                )
            kwargs = {key: value for key, value in kwargs.items() if key not in GPU_ONLY_ARGS}
        try:
            return SentenceTransformerTrainingArguments(output_dir=output_dir, **kwargs)
        except (ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0]
            precision = [key for key in GPU_ONLY_ARGS if kwargs.get(key) and key in message]
            if precision:
                raise ConfigError(
                    f"args.{precision[0]}",
                    f"{message} (set --set train.args.{precision[0]}=false to train without a GPU)",
                ) from None
            # Name the argument when the message quotes its value ("zigzag is not a valid SchedulerType").
            named = [key for key, value in self.args.items() if isinstance(value, str) and value and value in message]
            raise ConfigError(f"args.{named[0]}" if len(named) == 1 else "args", message) from None


def _check_argument_value(arguments: type, key: str, value: Any) -> None:
    """``value`` has the type the argument class annotates (strictly: ``"eight"`` is no integer) and lies in
    :data:`ARG_BOUNDS`. ``max_steps`` is -1 (use the epochs) or a positive step count."""
    if key == "max_steps" and isinstance(value, int) and not (value == -1 or value >= 1):
        raise ConfigError("args.max_steps", f"expected a step count >= 1, or -1 to train by epochs, got {value!r}")
    if type(value) is int and value > MAX_COUNT and key not in ("seed", "data_seed"):
        raise ConfigError(
            f"args.{key}", f"expected at most {MAX_COUNT} (2^31 - 1; more than any run holds), got {value}"
        )
    check_value(f"args.{key}", value, _argument_types(arguments).get(key), ARG_BOUNDS.get(key))


@functools.cache
def _argument_types(arguments: type) -> dict[str, Any]:
    """The resolved annotations of the trainer's argument class (a hundred fields: resolved once, not per key)."""
    import typing

    return typing.get_type_hints(arguments)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
