"""st-retrofit: retrofit small multilingual embedding models for retrieval with sentence-transformers.

The pipeline is synthesize -> mine -> mix and train -> evaluate -> publish; each part is usable on its own.
Names are imported on first use (PEP 562), so ``import st_retrofit`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.config import ConfigError
    from st_retrofit.evaluation.heldout import evaluate_retrieval
    from st_retrofit.losses import CachedRetrofitInfoNCELoss, RetrofitInfoNCELoss
    from st_retrofit.mining import EmbeddingCache, HardNegativeMiner, NegativeFilter, mine_negatives
    from st_retrofit.mixing import MixingCallback, RetrofitDataCollator, TemperatureBatchSampler
    from st_retrofit.models import OFFLINE_MODELS, load_model
    from st_retrofit.pipeline import run_pipeline, run_stage
    from st_retrofit.publish import build_release_folder, push_release
    from st_retrofit.recipe import Recipe, load_recipe, recipe_from_dict
    from st_retrofit.synth import build_demo_dataset

__version__ = "0.2.0"

_EXPORTS = {
    "CachedRetrofitInfoNCELoss": "st_retrofit.losses",
    "ConfigError": "st_retrofit.config",
    "EmbeddingCache": "st_retrofit.mining",
    "HardNegativeMiner": "st_retrofit.mining",
    "MixingCallback": "st_retrofit.mixing",
    "NegativeFilter": "st_retrofit.mining",
    "OFFLINE_MODELS": "st_retrofit.models",
    "Recipe": "st_retrofit.recipe",
    "RetrofitDataCollator": "st_retrofit.mixing",
    "RetrofitInfoNCELoss": "st_retrofit.losses",
    "TemperatureBatchSampler": "st_retrofit.mixing",
    "build_demo_dataset": "st_retrofit.synth",
    "build_release_folder": "st_retrofit.publish",
    "evaluate_retrieval": "st_retrofit.evaluation.heldout",
    "load_model": "st_retrofit.models",
    "load_recipe": "st_retrofit.recipe",
    "mine_negatives": "st_retrofit.mining",
    "push_release": "st_retrofit.publish",
    "recipe_from_dict": "st_retrofit.recipe",
    "run_pipeline": "st_retrofit.pipeline",
    "run_stage": "st_retrofit.pipeline",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
