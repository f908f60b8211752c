"""Data mixing: temperature-sampled, group-homogeneous batches and a collator that draws hard negatives from
mined pools at every step, with per-task prompts. Each part plugs into the stock ``SentenceTransformerTrainer``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.mixing.callback import MixingCallback
    from st_retrofit.mixing.collator import RetrofitDataCollator, task_id
    from st_retrofit.mixing.config import MixingConfig
    from st_retrofit.mixing.sampler import TemperatureBatchSampler, mixture_probabilities

_EXPORTS = {
    "MixingCallback": "st_retrofit.mixing.callback",
    "RetrofitDataCollator": "st_retrofit.mixing.collator",
    "task_id": "st_retrofit.mixing.collator",
    "TemperatureBatchSampler": "st_retrofit.mixing.sampler",
    "mixture_probabilities": "st_retrofit.mixing.sampler",
    "MixingConfig": "st_retrofit.mixing.config",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
