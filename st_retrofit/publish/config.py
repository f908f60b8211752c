"""Recipe section ``publish``: the release folder and the Hub upload."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from st_retrofit.config import ConfigError, ConfigModel, require


class PublishConfig(ConfigModel):
    """Export and Hub upload (recipe section ``publish``).

    Args:
        repo_id: ``org/name`` on the Hub; needed unless ``dry_run``.
        dry_run: write the folder that would be pushed and stop there.
        private: create the Hub repository as private.
        card_template: a Jinja2 model card template; ``null`` uses the packaged one.
        require_eval: refuse to publish without evaluation results.
        gate_tasks: tasks on which the retrofitted model must score at least its base to be published: mteb task
            names from the eval stage, with ``*`` wildcards (``"*-dev"``), or ``heldout`` for the held-out split's
            mean nDCG; empty = no gate.
        gate_tolerance: how far below its base (in nDCG, 0.03 = 3 points) a gate task may score before it counts as
            a regression; small dev tasks move by a few points when one query changes rank.
        allow_regression: publish even when the model scores below its base on a gate task (the card says so).
        license: the model's licence, a Hub licence id (``mit``, ``apache-2.0``); in the card, and needed by the
            MTEB leaderboard submission.
        mteb_training_datasets: the mteb tasks whose data the model was trained on (``[MSMARCO, NQ]``; ``[]`` =
            none), declared in the MTEB submission so the leaderboard can tell zero-shot scores; ``null`` = not
            declared (the leaderboard then counts the model's zero-shot share as unknown).
        int8: add ``onnx/model.onnx`` and ``onnx/model_qint8.onnx`` (exported without optimum; the layout
            sentence-transformers' onnx backend reads) and, in the card, the int8 model's measured scores beside the
            fp32 ones (``eval.backends`` must list ``onnx-int8``) and how to run it with onnxruntime alone.
    """

    repo_id: str | None = Field(None, description="Hub repository, org/name.")
    dry_run: bool = Field(True, description="Only write the folder that would be pushed.")
    private: bool = Field(True, description="Create the repository as private.")
    card_template: str | None = Field(
        None, json_schema_extra={"local_path": True}, description="Model card template path."
    )
    require_eval: bool = Field(True, description="Refuse to publish without eval results.")
    gate_tasks: list[str] = Field(default_factory=list, description="Tasks the model must not regress on.")
    gate_tolerance: float = Field(0.0, ge=0, lt=1, description="nDCG below the base a gate task may score.")
    allow_regression: bool = Field(False, description="Publish below the base on a gate task.")
    license: str | None = Field(None, description="Hub licence id of the model (mit, apache-2.0).")
    mteb_training_datasets: list[str] | None = Field(
        None, description="mteb tasks whose data trained the model, for the leaderboard submission."
    )
    int8: bool = Field(False, description="Add the ONNX fp32 and int8 models and their measured scores.")

    @model_validator(mode="after")
    def _check(self) -> PublishConfig:
        require(
            self.dry_run or bool(self.repo_id),
            "repo_id",
            "required when dry_run is false (e.g. repo_id: my-org/retrofit-small)",
        )
        if self.repo_id is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.repo_id)
            except HFValidationError:
                raise ConfigError("repo_id", f"expected org/name, got {self.repo_id!r}") from None
        return self

    def local_inputs(self) -> list[str]:
        return [self.card_template] if self.card_template else []

    def check_environment(self) -> None:
        if self.card_template is not None and not Path(self.card_template).is_file():
            raise ConfigError("card_template", f"file {self.card_template} does not exist")
        if self.mteb_training_datasets:
            from st_retrofit.extras import require_module

            mteb = require_module("mteb", "publish.mteb_training_datasets")
            for i, name in enumerate(self.mteb_training_datasets):
                try:
                    mteb.get_task(name)
                except KeyError:
                    raise ConfigError(
                        f"mteb_training_datasets[{i}]", f"{name!r} is no mteb task name (e.g. MSMARCO, NQ)"
                    ) from None
