from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from st_retrofit.losses.labels import PER_COLUMN, label_key


class WeightedLossSum(nn.Module):
    """Several losses on one forward pass: each term's ``compute_loss_from_embeddings`` gets the same embeddings,
    and the result is the weighted sum of the terms (or their weighted components, for the trainer to log).

    What it adds to sentence-transformers: its losses each embed the batch themselves, so adding a regularizer
    (``GlobalOrthogonalRegularizationLoss``, the spread-out term EmbeddingGemma trains with) or a second contrastive
    term (``MultipleNegativesRankingLoss`` with ``hardness_mode``, EmbeddingGemma's hardness weighting) to a loss
    would encode every text twice. Here the texts are embedded once (``embed_columns``) and every term reads the
    embeddings; the terms are the library's own classes, unchanged.

    Args:
        model: the SentenceTransformer being trained.
        losses: ``(loss, weight)`` pairs; every loss must have ``compute_loss_from_embeddings(embeddings[,
            labels])`` (all of sentence-transformers' in-batch losses and st-retrofit's do). The first is the main
            loss: it alone receives the labels (teacher scores, task ids) unless another declares a ``labels``
            argument; the library's distillation losses (``EmbedDistillLoss``, ``MSELoss``, ``DistillKLDivLoss``)
            get their entry of the collator's label dict (``teacher_embeddings``, ``teacher_scores``).
        return_components: return ``{name: weighted term}`` (a term that returns several components keeps them,
            prefixed with its class name when two terms share a component name) so the trainer logs each; set
            ``False`` for their sum (``MatryoshkaLoss`` needs one tensor).

    References:
        - Vera et al., EmbeddingGemma, 2025 (spread-out regularizer, hardness weighting):
          https://arxiv.org/abs/2509.20354
        - Zhang et al., Learning Spread-out Local Feature Descriptors (global orthogonal regularization), 2017:
          https://arxiv.org/abs/1708.06320

    Requirements:
        1. Inputs every term accepts (for the main loss with mined negatives: anchor, positive, negatives).

    Inputs:
        +-------------------------------------------------+--------------------------------------------+
        | Texts                                           | Labels                                     |
        +=================================================+============================================+
        | what the main loss takes                        | what the main loss takes                   |
        +-------------------------------------------------+--------------------------------------------+

    Relations:
        - A recipe builds it from ``train.loss`` (weight 1) and ``train.losses`` (more terms with weights).
        - With one term of weight 1 it equals that term.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from sentence_transformers.sentence_transformer.losses import GlobalOrthogonalRegularizationLoss

            from st_retrofit.losses import RetrofitInfoNCELoss, WeightedLossSum

            model = SentenceTransformer("intfloat/multilingual-e5-small")
            loss = WeightedLossSum(model, [
                (RetrofitInfoNCELoss(model, scale=100.0), 1.0),
                (GlobalOrthogonalRegularizationLoss(model), 0.1),
            ])
    """

    def __init__(self, model, losses: Sequence[tuple[nn.Module, float]], return_components: bool = True) -> None:
        super().__init__()
        if not losses:
            raise ValueError("WeightedLossSum needs at least one loss")
        for loss, weight in losses:
            if not hasattr(loss, "compute_loss_from_embeddings"):
                raise ValueError(f"{type(loss).__name__} has no compute_loss_from_embeddings; it cannot share a pass")
            if weight < 0:
                raise ValueError(f"weights must be >= 0, got {weight} for {type(loss).__name__}")
        self.model = model
        self.losses = nn.ModuleList(loss for loss, _ in losses)
        self.weights = [float(weight) for _, weight in losses]
        self.return_components = return_components
        self._label_keys = [label_key(type(loss)) for loss in self.losses]
        self._takes_labels = [
            i == 0 or key is not None or "labels" in inspect.signature(loss.compute_loss_from_embeddings).parameters
            for i, (loss, key) in enumerate(zip(self.losses, self._label_keys, strict=True))
        ]
        # A term that returns components (RetrofitInfoNCELoss) would hand MatryoshkaLoss a dict.
        for loss in self.losses:
            if not return_components and hasattr(loss, "return_components"):
                loss.return_components = False

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Any = None) -> Tensor | dict:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Any = None) -> Tensor | dict:
        components: dict[str, Tensor] = {}
        for loss, weight, takes_labels, key in zip(
            self.losses, self.weights, self._takes_labels, self._label_keys, strict=True
        ):
            if weight == 0:
                continue
            if not takes_labels:
                value = loss.compute_loss_from_embeddings(embeddings)
            else:  # a library loss gets its own entry of the collator's label dict, as the tensor it expects
                term_labels = labels.get(key) if key is not None and isinstance(labels, Mapping) else labels
                if key in PER_COLUMN and term_labels is not None:
                    term_labels = list(term_labels.unbind(1))  # (batch, columns, dim) -> one tensor per column
                value = loss.compute_loss_from_embeddings(embeddings, term_labels)
            name = type(loss).__name__
            parts = value if isinstance(value, Mapping) else {name: value}
            for key, part in parts.items():
                components[f"{name}.{key}" if key in components else key] = weight * part
        if self.return_components:
            return components
        return sum(components.values())

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "losses": [
                {"loss": type(loss).__name__, "weight": weight, **getattr(loss, "get_config_dict", dict)()}
                for loss, weight in zip(self.losses, self.weights, strict=True)
            ]
        }

    @property
    def citation(self) -> str:
        """The citations of every term."""
        return "\n".join(getattr(loss, "citation", "") or "" for loss in self.losses).strip()
