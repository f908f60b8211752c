"""Recipe section ``merge``: merge the trained model with its own checkpoints, its base or other models before it
is evaluated and published."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from st_retrofit.config import ConfigError, ConfigModel, keyed, require
from st_retrofit.merge.methods import MERGE_METHODS, MergeMethodName

BASE = "base"  # the recipe's model.base, as an ingredient


class MergeConfig(ConfigModel):
    """How the train stage merges its model (recipe section ``merge``); off while ``method`` is null.

    The trained model is always the first ingredient; ``checkpoints`` and ``models`` add the others. The stage
    keeps the unmerged model in ``train/unmerged`` and writes the merged one to ``train/model`` (what eval and
    publish read), with ``merge.json`` and a card section listing the ingredients and their weights.

    Args:
        method: a :data:`~st_retrofit.merge.methods.MERGE_METHODS` name: ``soup`` (weighted average), ``slerp``
            (two ingredients), a task-vector merge (``task_arithmetic``, ``ties``, ``dare_ties``) relative to
            ``model.base``, or ``mergekit:<method>``; ``null`` = no merge.
        checkpoints: add the run's last N trainer checkpoints (Qwen3-Embedding merges checkpoints of one run);
            ``train.args.save_total_limit`` must keep that many.
        models: more ingredients: ``base`` (the recipe's base model: a slerp towards it is WiSE-FT's
            interpolation), run folders, model folders, Hub ids or ``offline:`` names.
        weights: one per ingredient (the trained model first); soups normalize them; ``null`` = uniform.
        t: slerp position: 0 = the trained model, 1 = the other ingredient.
        density: share of each task vector kept (``ties``, ``dare_ties``).
        parameters: for ``mergekit:<method>`` (any method of mergekit, through ``SentenceTransformer.merge``; the
            ``merge`` extra): its own parameters, e.g. ``{lambda: 1.0}``; ``weights``, ``t`` and ``density`` fill
            ``weight``, ``t`` and ``density`` where the method takes them.
    """

    method: MergeMethodName | None = Field(
        None, description="soup, slerp, task_arithmetic, ties, dare_ties, mergekit:<method>."
    )
    checkpoints: int = Field(0, ge=0, description="Last trainer checkpoints to add as ingredients.")
    models: list[str] = Field(
        default_factory=list,
        json_schema_extra={"local_path": True},
        description="More ingredients: base, runs, models.",
    )
    weights: list[float] | None = Field(None, description="One weight per ingredient, the trained model first.")
    t: float = Field(0.5, ge=0, le=1, description="Slerp position (0 = the trained model).")
    density: float = Field(0.5, gt=0, le=1, description="Share of each task vector kept (ties, dare_ties).")
    parameters: dict[str, Any] = Field(default_factory=dict, description="mergekit: methods' own parameters.")

    def local_inputs(self) -> list[str]:
        """Ingredients on disk: a retrained one makes the merged model stale."""
        return [name for name in self.models if name != BASE] if self.enabled else []

    @property
    def enabled(self) -> bool:
        return self.method is not None

    @property
    def ingredient_count(self) -> int:
        return 1 + self.checkpoints + len(self.models)

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        if not self.enabled:
            return self
        kind = MERGE_METHODS[self.method]
        require(
            not self.parameters or kind.takes_parameters,
            "parameters",
            "are mergekit's; the built-in methods take weights, t and density",
        )
        count = self.ingredient_count
        require(count >= 2, "models", "a merge needs another ingredient: set checkpoints or models (e.g. [base])")
        require(
            kind.count is None or count == kind.count,
            "models",
            f"{self.method} merges exactly {kind.count} models; the trained model and {count - 1} more",
        )
        if self.weights is not None:
            require(
                len(self.weights) == count,
                "weights",
                f"{len(self.weights)} weights for {count} ingredients (the trained model, then checkpoints, "
                "then models)",
            )
        return self

    def check_environment(self) -> None:
        """The method's libraries are installed (PEFT for task vectors; mergekit, with the method, for
        ``mergekit:``)."""
        if self.enabled:
            from st_retrofit.merge.core import MergeError
            from st_retrofit.merge.methods import merge_method

            with keyed("method"):
                try:
                    merge_method(self.method)
                except MergeError as exc:
                    raise ConfigError("", str(exc)) from None
