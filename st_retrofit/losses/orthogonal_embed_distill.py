from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch
from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss
from torch import nn

logger = logging.getLogger(__name__)


class OrthogonalEmbedDistillLoss(EmbedDistillLoss):
    """Embedding distillation into a wider teacher's space through a cosine-preserving map: the library's
    ``EmbedDistillLoss`` with its projection held semi-orthogonal and started at the orthogonal Procrustes fit.

    What it adds to :class:`~sentence_transformers.sentence_transformer.losses.EmbedDistillLoss`: that loss maps a
    narrower student into the teacher's space with a free ``nn.Linear`` from a random start, and the map is dropped
    when the model is saved. A free map can stretch and shear, so it can absorb geometry the student lacks: the
    distance falls while the student's own cosines, the ones retrieval uses, need not move towards the teacher's.
    Here the projection ``W`` (``teacher_dim x student_dim``) keeps ``W^T W = I`` throughout training
    (``torch.nn.utils.parametrizations.orthogonal``), so ``cos(W s_i, W s_j) = cos(s_i, s_j)``: matching ``W s``
    to the teacher's ``t`` matches the student's own geometry to the teacher's, seen in the best
    ``student_dim``-dimensional view of it, and saving the student without ``W`` loses nothing. :meth:`fit` starts
    ``W`` at the rotation that best aligns the two models' embeddings of the training texts (the orthogonal
    Procrustes solution, one SVD), so the first steps pull the student towards the teacher instead of fitting a
    random map.

    On unlabeled text it is a teacher's way in that labels are not: the recipe's ``train.corpus_distillation``
    runs it on every corpus document and sentence the teacher encoded, in batches of their own.

    Args:
        model: the SentenceTransformer being trained (the student).
        teacher_dim: the teacher's embedding size, at least the student's.
        distance_metric: ``"cosine"`` (``1 - cos(W s, t)``), ``"mse"`` or ``"l2"``, as in ``EmbedDistillLoss``.

    References:
        - Kim et al., EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval, 2023:
          https://arxiv.org/abs/2301.12005
        - Schönemann, A generalized solution of the orthogonal Procrustes problem, 1966 (the fit).
        - Reimers and Gurevych, Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation,
          2020 (a student trained on a teacher's embeddings alone): https://arxiv.org/abs/2004.09813

    Requirements:
        1. The teacher's embeddings of every text of the batch: the recipe's collator adds them from the miner's
           cache (``labels["teacher_embeddings"]``); a script passes them as the ``label`` column, as for
           ``EmbedDistillLoss``.
        2. A teacher at least as wide as the student (a narrower one cannot hold the student's geometry).

    Inputs:
        +-----------------------------------------+-----------------------------------------------------+
        | Texts                                   | Labels                                              |
        +=========================================+=====================================================+
        | text                                    | teacher embeddings ``(batch, teacher_dim)``         |
        +-----------------------------------------+-----------------------------------------------------+
        | text_1, ..., text_N                     | teacher embeddings ``(batch, N, teacher_dim)``      |
        +-----------------------------------------+-----------------------------------------------------+

    Relations:
        - :class:`~sentence_transformers.sentence_transformer.losses.EmbedDistillLoss` (its base): a free projection
          from a random start.
        - :class:`~st_retrofit.losses.TeacherEmbeddingLoss` distils the teacher's in-batch ranking (relative, any
          sizes); this loss the absolute position of every text, so it also teaches on texts with no pair.

    Example:
        ::

            from st_retrofit.losses import OrthogonalEmbedDistillLoss

            loss = OrthogonalEmbedDistillLoss(student, teacher_dim=768)
            loss.fit(student.encode(texts, normalize_embeddings=True), teacher_embeddings)  # Procrustes start
            # train on a dataset with a "text" column and the teacher's embeddings as "label"
    """

    # The recipe's collator looks up the teacher's embeddings of the batch when a loss declares this.
    needs_teacher_embeddings: ClassVar[bool] = True

    def __init__(self, model, teacher_dim: int, distance_metric: str = "cosine") -> None:
        super().__init__(model, distance_metric=distance_metric)
        student_dim = model.get_embedding_dimension()
        if student_dim is None or teacher_dim < student_dim:
            raise ValueError(
                f"teacher_dim ({teacher_dim}) must be at least the student's embedding size ({student_dim}): a "
                "narrower teacher cannot hold the student's geometry; use TeacherEmbeddingLoss (rankings, any sizes)"
            )
        self.projection_dim = int(teacher_dim)
        linear = nn.Linear(student_dim, teacher_dim, bias=False, device=model.device)
        # Semi-orthogonal columns (W^T W = I) whatever the optimizer does; the parametrization's own start is random
        # until fit() sets it.
        self.projection = nn.utils.parametrizations.orthogonal(linear)
        self.fitted_cosine: float | None = None

    @torch.no_grad()
    def fit(
        self, student_embeddings: np.ndarray | torch.Tensor, teacher_embeddings: np.ndarray | torch.Tensor
    ) -> float:
        """Set the projection to the orthogonal Procrustes solution for these paired embeddings (rows: the same
        texts, each model's normalized embedding) and return the mean cosine of ``W s`` to ``t`` it reaches.

        ``W = U V^T`` from the SVD ``T^T S = U Σ V^T`` maximizes ``Σ_i t_i · W s_i`` over semi-orthogonal ``W``.
        """
        student = torch.as_tensor(np.asarray(student_embeddings, dtype=np.float64))
        teacher = torch.as_tensor(np.asarray(teacher_embeddings, dtype=np.float64))
        if student.shape[0] != teacher.shape[0] or student.shape[1] != self.projection.in_features:
            raise ValueError(
                f"fit needs the same rows from both models, student ({self.projection.in_features} dims) and "
                f"teacher ({self.projection_dim}); got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        if teacher.shape[1] != self.projection_dim:
            raise ValueError(f"the teacher's embeddings have {teacher.shape[1]} dims, not {self.projection_dim}")
        u, _, vt = torch.linalg.svd(teacher.T @ student, full_matrices=False)
        weight = u @ vt  # (teacher_dim, student_dim), orthonormal columns
        self.projection.weight = weight.to(self.projection.weight.dtype)
        fitted = torch.nn.functional.cosine_similarity(student @ weight.T, teacher, dim=-1).mean().item()
        self.fitted_cosine = fitted
        logger.info("Procrustes start of the projection: mean cosine to the teacher %.4f", fitted)
        return fitted

    def save_projection(self, path) -> None:
        """Write the projection's weight (``teacher_dim x student_dim``, semi-orthogonal) to a safetensors file."""
        from safetensors.torch import save_file

        save_file({"weight": self.projection.weight.detach().to("cpu").contiguous()}, str(path))

    def load_projection(self, path) -> None:
        """Set the projection to a weight :meth:`save_projection` wrote (a later stage of training goes on from it)."""
        from safetensors.torch import load_file

        weight = load_file(str(path))["weight"]
        expected = (self.projection_dim, self.projection.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(f"{path}: a projection of shape {tuple(weight.shape)}, expected {expected}")
        with torch.no_grad():
            self.projection.weight = weight.to(self.projection.weight.dtype)

    def get_config_dict(self) -> dict[str, Any]:
        return {"teacher_dim": self.projection_dim, "distance_metric": self.distance_metric}

    @property
    def citation(self) -> str:
        return """@article{kim2023embeddistill,
    title={EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval},
    author={Kim, Seungyeon and Rawat, Ankit Singh and Zaheer, Manzil and Jayasumana, Sadeep and Sadhanala, Veeranjaneyulu and Jitkrittum, Wittawat and Menon, Aditya Krishna and Fergus, Rob and Kumar, Sanjiv},
    journal={arXiv preprint arXiv:2301.12005},
    year={2023}
}"""
