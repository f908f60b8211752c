"""st-retrofit: retrofit small multilingual embedding models for retrieval with sentence-transformers.

The pipeline is synthesize -> mine -> mix and train -> evaluate -> publish; each part is usable on its own.
"""

from __future__ import annotations

from st_retrofit.evaluate import evaluate_retrieval
from st_retrofit.losses import CachedRetrofitInfoNCELoss, RetrofitInfoNCELoss
from st_retrofit.mining import EmbeddingCache, HardNegativeMiner, NegativeFilter, mine_negatives
from st_retrofit.mixing import MixingCallback, RetrofitDataCollator, TemperatureBatchSampler
from st_retrofit.models import OFFLINE_MODELS, load_model
from st_retrofit.pipeline import run_pipeline, run_stage
from st_retrofit.publish import build_release_folder, push_release
from st_retrofit.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from st_retrofit.synth import build_demo_dataset

__version__ = "0.1.0"

__all__ = [
    "CachedRetrofitInfoNCELoss",
    "EmbeddingCache",
    "HardNegativeMiner",
    "MixingCallback",
    "NegativeFilter",
    "OFFLINE_MODELS",
    "Recipe",
    "RecipeError",
    "RetrofitDataCollator",
    "RetrofitInfoNCELoss",
    "TemperatureBatchSampler",
    "build_demo_dataset",
    "build_release_folder",
    "evaluate_retrieval",
    "load_model",
    "load_recipe",
    "mine_negatives",
    "push_release",
    "recipe_from_dict",
    "run_pipeline",
    "run_stage",
]
