"""Data mixing: temperature-sampled, group-homogeneous batches and a collator that draws hard negatives from
mined pools at every step, with per-task prompts. Each part plugs into the stock ``SentenceTransformerTrainer``."""

from __future__ import annotations

from st_retrofit.mixing.callback import MixingCallback
from st_retrofit.mixing.collator import RetrofitDataCollator, task_id
from st_retrofit.mixing.sampler import TemperatureBatchSampler, mixture_probabilities
from st_retrofit.mixing.settings import MixingSettingError

__all__ = [
    "MixingCallback",
    "MixingSettingError",
    "RetrofitDataCollator",
    "TemperatureBatchSampler",
    "mixture_probabilities",
    "task_id",
]
