"""Model resolution: ``offline:<name>`` models carried by packages, local folders and Hub ids."""

from __future__ import annotations

from st_retrofit.models.resolve import (
    OFFLINE_MODELS,
    ModelNotFoundError,
    base_model_id,
    cache_dir,
    check_model_name,
    load_model,
    resolve_model_path,
    role_prompt,
)

__all__ = [
    "OFFLINE_MODELS",
    "ModelNotFoundError",
    "base_model_id",
    "cache_dir",
    "check_model_name",
    "load_model",
    "resolve_model_path",
    "role_prompt",
]
