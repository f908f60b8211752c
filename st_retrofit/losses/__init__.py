"""Losses for retrofitting: drop-ins for the stock ``SentenceTransformerTrainer``."""

from __future__ import annotations

from st_retrofit.losses.cached_retrofit_infonce import CachedRetrofitInfoNCELoss
from st_retrofit.losses.retrofit_infonce import RetrofitInfoNCELoss

__all__ = ["CachedRetrofitInfoNCELoss", "RetrofitInfoNCELoss"]
