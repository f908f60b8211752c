"""A loss's own parameters in trainer checkpoints.

A loss may learn weights of its own: the projection of ``EmbedDistillLoss`` and ``OrthogonalEmbedDistillLoss``, the
temperature of ``RetrofitInfoNCELoss(learnable_scale=True)``. The trainer optimizes them (and checkpoints their
optimizer moments) but saves only the model, so a run resumed from a checkpoint would go on with the loss's
weights as they were at the start, not as they were at the checkpoint. :class:`LossParametersCallback` writes them
into each checkpoint, :func:`restore_loss_parameters` reads them back before the run resumes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

LOSS_PARAMETERS = "loss_parameters.safetensors"


def loss_parameters(loss: Any, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters the loss holds besides the model's, by name (``<dataset>/<name>`` for a dict of losses; a
    loss shared by several datasets is named once)."""
    model_ids = {id(p) for p in model.parameters()}
    named: dict[str, torch.nn.Parameter] = {}
    seen: set[int] = set()
    for prefix, module in loss.items() if isinstance(loss, dict) else [("", loss)]:
        for name, parameter in module.named_parameters():
            if id(parameter) in model_ids or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            named[f"{prefix}/{name}" if prefix else name] = parameter
    return named


class LossParametersCallback(TrainerCallback):
    """Saves the loss's own parameters (:func:`loss_parameters`) into every checkpoint the trainer writes.

    Example:
        ::

            trainer = SentenceTransformerTrainer(..., loss=loss, callbacks=[LossParametersCallback(loss, model)])
    """

    def __init__(self, loss: Any, model: torch.nn.Module) -> None:
        self.loss, self.model = loss, model

    def on_save(self, args, state, control, **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        from safetensors.torch import save_file

        from st_retrofit.files import atomic_path

        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        tensors = {
            name: p.detach().to("cpu").contiguous() for name, p in loss_parameters(self.loss, self.model).items()
        }
        with atomic_path(checkpoint / LOSS_PARAMETERS) as tmp:
            save_file(tensors, os.fspath(tmp))


def restore_loss_parameters(loss: Any, model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load the loss's own parameters saved in ``checkpoint`` into the loss, in place (the optimizer keeps its
    references to them).

    Raises:
        FileNotFoundError: the loss has parameters and the checkpoint does not hold them.
    """
    from safetensors.torch import load_file

    parameters = loss_parameters(loss, model)
    if not parameters:
        return
    path = Path(checkpoint) / LOSS_PARAMETERS
    saved = load_file(os.fspath(path))
    missing = sorted(set(parameters) - set(saved))
    if missing:
        raise KeyError(f"{path} has no {missing[0]}: the checkpoint was written by another loss")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
    logger.info("Restored the loss's parameters (%s) from %s", ", ".join(parameters), path)
