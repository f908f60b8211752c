"""Release folders, model cards and Hub upload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.publish.card import render_model_card
    from st_retrofit.publish.config import PublishConfig
    from st_retrofit.publish.errors import PublishError
    from st_retrofit.publish.mteb_submission import write_mteb_submission
    from st_retrofit.publish.release import build_release_folder, publish_stage, push_release

_EXPORTS = {
    "render_model_card": "st_retrofit.publish.card",
    "PublishError": "st_retrofit.publish.errors",
    "write_mteb_submission": "st_retrofit.publish.mteb_submission",
    "build_release_folder": "st_retrofit.publish.release",
    "publish_stage": "st_retrofit.publish.release",
    "push_release": "st_retrofit.publish.release",
    "PublishConfig": "st_retrofit.publish.config",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
