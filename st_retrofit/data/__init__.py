"""Training pairs from outside the synth stage (Hub datasets, local files); reading and hashing them is
:mod:`st_retrofit.dataio`'s (its names are exported here too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.data.config import DataConfig, DataSourceConfig
    from st_retrofit.data.sources import load_source, training_pairs
    from st_retrofit.dataio import read_dataset

_EXPORTS = {
    "DataConfig": "st_retrofit.data.config",
    "DataSourceConfig": "st_retrofit.data.config",
    "cached_content_hash": "st_retrofit.dataio",
    "content_hash": "st_retrofit.dataio",
    "is_local": "st_retrofit.dataio",
    "load_source": "st_retrofit.data.sources",
    "local_columns": "st_retrofit.dataio",
    "read_dataset": "st_retrofit.dataio",
    "training_pairs": "st_retrofit.data.sources",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
