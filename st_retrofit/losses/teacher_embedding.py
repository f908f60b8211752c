from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

Target = Literal["similarities", "embeddings"]


class TeacherEmbeddingLoss(nn.Module):
    """Distillation towards the teacher's embeddings that the miner already computed: the student's in-batch
    similarities (or its embeddings themselves) are pulled towards the teacher's, with no teacher forward pass.

    The miner encodes every query and document with its teacher and keeps the embeddings in its cache; the
    recipe's collator (:class:`~st_retrofit.mixing.RetrofitDataCollator` with ``teacher_embeddings``) looks up the
    batch's texts there and hands them to this loss as ``labels["teacher_embeddings"]``, one ``(batch, dim)`` block
    per text column. Two targets:

    - ``"similarities"`` (any dimensions): for each query, the teacher's distribution over every document in the
      batch (positives and hard negatives of all rows, at ``teacher_scale``) is distilled into the student's (at
      ``scale``) by KL divergence. It carries the teacher's ranking of in-batch candidates, which the miner's
      scores (``RetrofitInfoNCELoss(distill_weight=...)``) give only for the row's own candidates; each model keeps
      its own temperature, so a teacher with compressed cosines (multilingual-e5: 0.7-0.95) does not squeeze the
      student's scale.
    - ``"embeddings"`` (same dimension): ``1 - cos(student, teacher)`` for every text, which maps the student into
      the teacher's space (Reimers and Gurevych's multilingual distillation, on the miner's embeddings).

    Args:
        model: the SentenceTransformer being trained.
        target: ``"similarities"`` or ``"embeddings"`` (see above).
        scale: the student's inverse temperature for ``"similarities"``; use the main loss's.
        teacher_scale: the teacher's; ``None`` = ``scale``. Use the teacher's training temperature (multilingual-e5:
            100).

    References:
        - Hinton et al., Distilling the Knowledge in a Neural Network, 2015: https://arxiv.org/abs/1503.02531
        - Reimers and Gurevych, Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation,
          2020: https://arxiv.org/abs/2004.09813
        - Vera et al., EmbeddingGemma (embedding distillation from a stronger model), 2025:
          https://arxiv.org/abs/2509.20354

    Requirements:
        1. (anchor, positive[, negative_1, ..., negative_n]) rows.
        2. The teacher's embeddings of every text of the batch in the labels: the recipe's collator adds them when
           this loss is in ``train.losses``; a script passes ``RetrofitDataCollator(teacher_embeddings=...)``.

    Inputs:
        +-------------------------------------------------+------------------------------------------------------+
        | Texts                                           | Labels                                               |
        +=================================================+======================================================+
        | (anchor, positive, negative_1, ..., negative_n) | ``{"teacher_embeddings": (columns, batch, dim)}``    |
        +-------------------------------------------------+------------------------------------------------------+

    Relations:
        - :class:`~sentence_transformers.sentence_transformer.losses.MSELoss` regresses every column onto one teacher
          embedding per row (a sentence and its translations); here each text has its own, from the miner's cache.
        - :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss` and ``RetrofitInfoNCELoss``'s
          ``distill_weight`` distil scores of the row's own candidates; ``"similarities"`` distils the whole batch.
        - Added to the main loss on one forward pass through ``train.losses`` (:class:`WeightedLossSum`).

    Example:
        ::

            from st_retrofit.losses import RetrofitInfoNCELoss, TeacherEmbeddingLoss, WeightedLossSum

            loss = WeightedLossSum(model, [
                (RetrofitInfoNCELoss(model, scale=20.0), 1.0),
                (TeacherEmbeddingLoss(model, target="similarities", scale=20.0, teacher_scale=100.0), 1.0),
            ])
            # collator = RetrofitDataCollator(..., teacher_embeddings=TeacherEmbeddings.from_mining_report(report))
    """

    # The recipe's collator looks up the teacher's embeddings of the batch when a loss declares this.
    needs_teacher_embeddings: ClassVar[bool] = True
    collator_labels: ClassVar[str] = "dict"

    def __init__(
        self, model, target: Target = "similarities", scale: float = 20.0, teacher_scale: float | None = None
    ):
        super().__init__()
        if target not in ("similarities", "embeddings"):
            raise ValueError(f"target must be 'similarities' or 'embeddings', got {target!r}")
        if scale <= 0 or (teacher_scale is not None and teacher_scale <= 0):
            raise ValueError("scale and teacher_scale must be > 0")
        self.model = model
        self.target = target
        self.scale = float(scale)
        self.teacher_scale = float(teacher_scale) if teacher_scale is not None else float(scale)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Any = None) -> Tensor:
        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Any = None) -> Tensor:
        teacher = labels.get("teacher_embeddings") if isinstance(labels, Mapping) else None
        if teacher is None:
            raise ValueError(
                "TeacherEmbeddingLoss needs the teacher's embeddings in labels['teacher_embeddings']; the recipe's "
                "collator adds them from the mining cache (RetrofitDataCollator(teacher_embeddings=...))"
            )
        teacher = teacher.to(embeddings[0].device, torch.float32)
        if teacher.shape[:2] != (len(embeddings), embeddings[0].size(0)):
            raise ValueError(
                f"teacher embeddings must have shape (columns, batch, dim) = ({len(embeddings)}, "
                f"{embeddings[0].size(0)}, dim), got {tuple(teacher.shape)}"
            )
        student = [F.normalize(e.float(), dim=-1) for e in embeddings]
        teacher = F.normalize(teacher, dim=-1)
        if self.target == "embeddings":
            if teacher.size(-1) != student[0].size(-1):
                raise ValueError(
                    f"target='embeddings' needs the teacher's dimension ({teacher.size(-1)}) to equal the "
                    f"student's ({student[0].size(-1)}); use target='similarities'"
                )
            return (1 - (torch.stack(student) * teacher).sum(-1)).mean()
        # Every query against every document of the batch, for both models.
        student_scores = student[0] @ torch.cat(student[1:]).T * self.scale
        teacher_scores = teacher[0] @ teacher[1:].reshape(-1, teacher.size(-1)).T * self.teacher_scale
        return F.kl_div(
            F.log_softmax(student_scores, dim=1), F.log_softmax(teacher_scores, dim=1), log_target=True,
            reduction="batchmean",
        )  # fmt: skip

    def get_config_dict(self) -> dict[str, Any]:
        return {"target": self.target, "scale": self.scale, "teacher_scale": self.teacher_scale}

    @property
    def citation(self) -> str:
        return """@article{hinton2015distilling,
    title={Distilling the Knowledge in a Neural Network},
    author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
    journal={arXiv preprint arXiv:1503.02531},
    year={2015}
}"""
