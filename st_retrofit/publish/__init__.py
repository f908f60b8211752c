"""Release folders, model cards and Hub upload."""

from __future__ import annotations

from st_retrofit.publish.card import render_model_card
from st_retrofit.publish.release import PublishError, build_release_folder, publish_stage, push_release

__all__ = ["PublishError", "build_release_folder", "publish_stage", "push_release", "render_model_card"]
