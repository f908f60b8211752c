"""Recipe section ``eval``: held-out retrieval of base and retrofitted model, and mteb tasks."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from st_retrofit.config import ConfigModel, keyed, require
from st_retrofit.export.backends import ENCODER_BACKENDS, EncoderBackendName


class EvalConfig(ConfigModel):
    """Retrieval evaluation of base and retrofitted model on the held-out split (recipe section ``eval``).

    Args:
        k: cut-off for nDCG@k and Recall@k.
        batch_size: encoding batch size.
        mteb_tasks: also evaluate both models with mteb on these: benchmark names (``MTEB(Multilingual, v2)``),
            task names (``MIRACLRetrieval``) or local BEIR-style folders (see :mod:`st_retrofit.evaluation.mteb`;
            the ``eval`` extra).
        mteb_baselines: ``{label: folder}`` of mteb results of other models, added as columns of the comparison.
        dimensions: embedding sizes to score besides the full one (embeddings cut with ``truncate_dim``); ``null``
            = ``train.matryoshka_dims``. Set it without Matryoshka training to see what cutting costs a model
            trained without it.
        backends: also score the retrofitted model run by these encoder backends
            (:data:`~st_retrofit.export.backends.ENCODER_BACKENDS`: ``onnx``, ``onnx-int8``), on the held-out split
            and ``mteb_tasks``: what int8 costs, measured (``publish.int8`` needs ``onnx-int8`` here).
    """

    k: int = Field(10, ge=1, description="Cut-off for nDCG@k and Recall@k.")
    batch_size: int = Field(64, ge=1, description="Encoding batch size.")
    mteb_tasks: list[str] = Field(
        default_factory=list, json_schema_extra={"local_path": True}, description="mteb benchmarks, tasks or folders."
    )
    mteb_baselines: dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"local_path": True}, description="Label -> mteb results folder."
    )
    dimensions: list[int] | None = Field(None, description="Embedding sizes to score; null = train.matryoshka_dims.")
    backends: list[EncoderBackendName] = Field(
        default_factory=list, description="Encoder backends to score too: onnx, onnx-int8."
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        for i, size in enumerate(self.dimensions or []):
            require(size >= 1, f"dimensions[{i}]", f"expected a size >= 1, got {size}")
        for i, name in enumerate(self.backends):
            require(name != "torch", f"backends[{i}]", "torch is what eval scores anyway; name onnx or onnx-int8")
        for label, folder in self.mteb_baselines.items():
            require(Path(folder).expanduser().is_dir(), f"mteb_baselines.{label}", f"folder {folder} does not exist")
        return self

    def local_inputs(self) -> list[str]:
        """Local BEIR folders among ``mteb_tasks`` (an edited dev set makes the results stale)."""
        return [spec for spec in self.mteb_tasks if Path(spec).expanduser().is_dir()]

    def check_environment(self) -> None:
        """Every ``mteb_tasks`` entry names a folder, an mteb task or a benchmark (mteb is imported only then), and
        every backend's packages are installed."""
        for i, name in enumerate(self.backends):
            with keyed(f"backends[{i}]"):
                ENCODER_BACKENDS[name].check_environment()
        if not self.mteb_tasks:
            return
        from st_retrofit.evaluation.mteb import resolve_tasks

        for i, spec in enumerate(self.mteb_tasks):
            with keyed(f"mteb_tasks[{i}]"):
                resolve_tasks([spec])
