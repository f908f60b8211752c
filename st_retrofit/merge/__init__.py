"""Model merging: soups, slerp and task-vector merges (task arithmetic, TIES, DARE) of models from one base."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.merge.core import MergeError, check_same_architecture, slerp, slerp_tensor, soup
    from st_retrofit.merge.folders import merge_folders
    from st_retrofit.merge.methods import MERGE_METHODS, MergeMethod, merge_models, merge_task_vectors

_EXPORTS = {
    "MergeError": "st_retrofit.merge.core",
    "check_same_architecture": "st_retrofit.merge.core",
    "merge_models": "st_retrofit.merge.methods",
    "merge_task_vectors": "st_retrofit.merge.methods",
    "MERGE_METHODS": "st_retrofit.merge.methods",
    "MergeMethod": "st_retrofit.merge.methods",
    "slerp": "st_retrofit.merge.core",
    "slerp_tensor": "st_retrofit.merge.core",
    "soup": "st_retrofit.merge.core",
    "merge_folders": "st_retrofit.merge.folders",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
