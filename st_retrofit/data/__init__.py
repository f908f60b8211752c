"""Training pairs from outside the synth stage (Hub datasets, local files) and content hashes of local inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.data.config import DataConfig, DataSourceConfig
    from st_retrofit.data.sources import load_source, read_dataset, training_pairs

_EXPORTS = {
    "DataConfig": "st_retrofit.data.config",
    "DataSourceConfig": "st_retrofit.data.config",
    "cached_content_hash": "st_retrofit.data.sources",
    "content_hash": "st_retrofit.data.sources",
    "is_local": "st_retrofit.data.sources",
    "load_source": "st_retrofit.data.sources",
    "local_columns": "st_retrofit.data.sources",
    "read_dataset": "st_retrofit.data.sources",
    "training_pairs": "st_retrofit.data.sources",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
