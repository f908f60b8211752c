"""The ``train`` stage: contrastive training through the stock ``SentenceTransformerTrainer``, LoRA optional."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.train.config import TrainConfig, resolve_loss_class
    from st_retrofit.train.stage import build_collator, build_model, merge_adapter, train_stage

_EXPORTS = {
    "TrainConfig": "st_retrofit.train.config",
    "resolve_loss_class": "st_retrofit.train.config",
    "batch_sampler": "st_retrofit.train.stage",
    "build_collator": "st_retrofit.train.stage",
    "build_model": "st_retrofit.train.stage",
    "merge_adapter": "st_retrofit.train.stage",
    "train_stage": "st_retrofit.train.stage",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
