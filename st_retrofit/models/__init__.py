"""Model resolution: ``offline:<name>`` models carried by packages, local folders and Hub ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.models.config import LoraSettings, ModelConfig
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

_EXPORTS = {
    "OFFLINE_MODELS": "st_retrofit.models.resolve",
    "ModelNotFoundError": "st_retrofit.models.resolve",
    "base_model_id": "st_retrofit.models.resolve",
    "cache_dir": "st_retrofit.models.resolve",
    "check_model_name": "st_retrofit.models.resolve",
    "load_model": "st_retrofit.models.resolve",
    "resolve_model_path": "st_retrofit.models.resolve",
    "role_prompt": "st_retrofit.models.resolve",
    "ModelConfig": "st_retrofit.models.config",
    "LoraSettings": "st_retrofit.models.config",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
