from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn


class TeacherEmbeddingLoss(nn.Module):
    """Distillation of the teacher's in-batch ranking from the embeddings the miner already computed: for each
    query, the teacher's distribution over every document of the batch is distilled into the student's, with no
    teacher forward pass.

    The miner encodes every query and document with its teacher and keeps the embeddings in its cache; the recipe's
    collator (:class:`~st_retrofit.mixing.RetrofitDataCollator` with ``teacher_embeddings``) looks up the batch's
    texts there and hands them to the losses as ``labels["teacher_embeddings"]``, ``(batch, columns, dim)``. Here,
    the teacher's scores of each query against all positives and hard negatives of the batch (at
    ``teacher_scale``) are the target of the student's (at ``scale``), by KL divergence. The two models' dimensions
    may differ, and each keeps its own temperature, so a teacher with compressed cosines (multilingual-e5:
    0.7-0.95) does not squeeze the student's scale. To pull the embeddings themselves onto the teacher's, put the
    library's :class:`~sentence_transformers.sentence_transformer.losses.EmbedDistillLoss` in ``train.losses``: the
    recipe hands it the same cached embeddings.

    Args:
        model: the SentenceTransformer being trained.
        scale: the student's inverse temperature; use the main loss's.
        teacher_scale: the teacher's; ``None`` = ``scale``. Use the teacher's training temperature (multilingual-e5:
            100).

    References:
        - Hinton et al., Distilling the Knowledge in a Neural Network, 2015: https://arxiv.org/abs/1503.02531
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
        | (anchor, positive, negative_1, ..., negative_n) | ``{"teacher_embeddings": (batch, columns, dim)}``    |
        +-------------------------------------------------+------------------------------------------------------+

    Relations:
        - :class:`~sentence_transformers.sentence_transformer.losses.EmbedDistillLoss` matches each embedding to
          the teacher's (with a projection when the dimensions differ); this loss matches the batch's ranking.
        - :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss` and ``RetrofitInfoNCELoss``'s
          ``distill_weight`` distil scores of the row's own candidates; this loss distils the whole batch's.
        - Added to the main loss on one forward pass through ``train.losses`` (:class:`WeightedLossSum`).

    Example:
        ::

            from st_retrofit.losses import RetrofitInfoNCELoss, TeacherEmbeddingLoss, WeightedLossSum

            loss = WeightedLossSum(model, [
                (RetrofitInfoNCELoss(model, scale=20.0), 1.0),
                (TeacherEmbeddingLoss(model, scale=20.0, teacher_scale=100.0), 1.0),
            ])
            # collator = RetrofitDataCollator(..., teacher_embeddings=TeacherEmbeddings.from_mining_report(report))
    """

    # The recipe's collator looks up the teacher's embeddings of the batch when a loss declares this.
    needs_teacher_embeddings: ClassVar[bool] = True
    collator_labels: ClassVar[str] = "dict"

    def __init__(self, model, scale: float = 20.0, teacher_scale: float | None = None):
        super().__init__()
        if scale <= 0 or (teacher_scale is not None and teacher_scale <= 0):
            raise ValueError("scale and teacher_scale must be > 0")
        self.model = model
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
        if teacher.shape[:2] != (embeddings[0].size(0), len(embeddings)):
            raise ValueError(
                f"teacher embeddings must have shape (batch, columns, dim) = ({embeddings[0].size(0)}, "
                f"{len(embeddings)}, dim), got {tuple(teacher.shape)}"
            )
        student = [F.normalize(e.float(), dim=-1) for e in embeddings]
        teacher = F.normalize(teacher, dim=-1)
        # Every query against every document of the batch, for both models (documents column by column).
        student_scores = student[0] @ torch.cat(student[1:]).T * self.scale
        teacher_documents = teacher[:, 1:].transpose(0, 1).reshape(-1, teacher.size(-1))
        teacher_scores = teacher[:, 0] @ teacher_documents.T * self.teacher_scale
        return F.kl_div(
            F.log_softmax(student_scores, dim=1), F.log_softmax(teacher_scores, dim=1), log_target=True,
            reduction="batchmean",
        )  # fmt: skip

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "teacher_scale": self.teacher_scale}

    @property
    def citation(self) -> str:
        return """@article{hinton2015distilling,
    title={Distilling the Knowledge in a Neural Network},
    author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
    journal={arXiv preprint arXiv:1503.02531},
    year={2015}
}"""
