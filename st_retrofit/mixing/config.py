"""Recipe section ``mixing``: how training batches are drawn (:class:`~st_retrofit.mixing.TemperatureBatchSampler`)
and collated (:class:`~st_retrofit.mixing.RetrofitDataCollator`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from st_retrofit.config import ConfigModel
from st_retrofit.mixing.settings import check_collator_settings, check_sampler_settings, sampling_mode


class MixingConfig(ConfigModel):
    """How training batches are drawn and collated (recipe section ``mixing``).

    Each training split (the miner writes one per ``mining.group_by`` value) is a dataset; every batch comes from
    one group.

    Args:
        alpha: mixing exponent: a group's batches are proportional to its size ** alpha (1 = proportional,
            0 = uniform; 0.3 to 0.7 is usual).
        weights: extra multiplier per group name.
        caps: per group name, the most rows its size counts for.
        group_by: what a batch may not mix: ``dataset`` (the splits), a column, or a list of them.
        num_batches: batches per epoch; ``null`` = the (capped) rows over the batch size.
        no_duplicates: keep repeated texts out of a batch (across every text column).
        length_buckets: batch texts of similar length together: each group's rows are sorted by length within
            windows of this many batches, whose batches are then shuffled; ``0`` = off. Less padding per batch.
        num_negatives: negatives drawn per row and step from a mined ``pool``; ``null`` = ``mining.num_negatives``.
        range_min: first pool rank drawn from (the name mining uses for the same idea).
        range_max: end of the drawn ranks (exclusive); ``null`` = the whole pool.
        sampling: ``random`` (uniform over the range, as mining's ``random``), ``teacher`` (weighted by the
            teacher's score) or ``top``.
        sampling_temperature: temperature of the teacher weighting.
        prompts: per-task prompts: one string, or ``{task: string | {query: .., document: ..}}``, ``"*"`` = any
            other task; sides without one get the model's own prompts. Saved on the trained model.
        prompt_side: where a string prompt goes: ``query``, ``document`` or ``both``.
        task_column: the column naming each row's task (passed to the loss as task ids); ``null`` = none.
        labels: what the loss receives: ``auto`` (what the loss class declares in ``collator_labels``, else
            ``teacher_scores``), ``dict``, ``teacher_scores`` or ``none``.
    """

    renamed: ClassVar[dict[str, str]] = {"rank_min": "range_min", "rank_max": "range_max"}

    alpha: float = Field(0.5, description="Mixing exponent in [0, 1].")
    # Values are checked by check_sampler_settings, whose messages the sampler gives from Python too.
    weights: dict[str, Any] = Field(default_factory=dict, description="Multiplier per group (a number > 0).")
    caps: dict[str, Any] = Field(
        default_factory=dict, description="Rows counted per group, at most (an integer >= 1)."
    )
    group_by: str | list[str] = Field(default_factory=lambda: ["dataset"], description="Batch groups.")
    num_batches: int | None = Field(None, description="Batches per epoch.")
    no_duplicates: bool = Field(True, description="No repeated text in a batch.")
    length_buckets: int = Field(0, ge=0, description="Sort rows by length within windows of this many batches.")
    num_negatives: int | None = Field(None, description="Pool negatives drawn per row.")
    range_min: int = Field(0, description="First pool rank drawn from.")
    range_max: int | None = Field(None, description="End of drawn pool ranks.")
    sampling: Literal["random", "teacher", "top"] = Field("random", description="Draw rule.")
    sampling_temperature: float = Field(0.05, description="Teacher weighting temperature.")
    prompts: str | dict[str, Any] | None = Field(None, description="Per-task prompts.")
    prompt_side: Literal["query", "document", "both"] = Field("query", description="Prompt side.")
    task_column: str | None = Field("task", description="Column naming each row's task.")
    labels: Literal["auto", "dict", "teacher_scores", "none"] = Field("auto", description="Labels.")

    @field_validator("sampling", mode="before")
    @classmethod
    def _renamed_sampling(cls, value: Any) -> Any:
        return sampling_mode(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> MixingConfig:
        # The sampler and collator check their own settings the same way when built from Python.
        self.group_by = check_sampler_settings(self.alpha, self.weights, self.caps, self.group_by, self.num_batches)
        check_collator_settings(
            self.num_negatives if self.num_negatives is not None else 0,
            self.range_min,
            self.range_max,
            self.sampling,
            self.sampling_temperature,
            self.prompt_side,
            "dict" if self.labels == "auto" else self.labels,
            self.prompts,
        )
        return self
