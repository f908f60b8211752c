"""Losses for retrofitting: drop-ins for the stock ``SentenceTransformerTrainer``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.losses.cached_retrofit_infonce import CachedRetrofitInfoNCELoss
    from st_retrofit.losses.orthogonal_embed_distill import OrthogonalEmbedDistillLoss
    from st_retrofit.losses.retrofit_infonce import RetrofitInfoNCELoss
    from st_retrofit.losses.teacher_embedding import TeacherEmbeddingLoss
    from st_retrofit.losses.weighted_sum import WeightedLossSum

_EXPORTS = {
    "CachedRetrofitInfoNCELoss": "st_retrofit.losses.cached_retrofit_infonce",
    "OrthogonalEmbedDistillLoss": "st_retrofit.losses.orthogonal_embed_distill",
    "RetrofitInfoNCELoss": "st_retrofit.losses.retrofit_infonce",
    "TeacherEmbeddingLoss": "st_retrofit.losses.teacher_embedding",
    "WeightedLossSum": "st_retrofit.losses.weighted_sum",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
