from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from st_retrofit.losses.retrofit_infonce import MarginStrategy, RetrofitInfoNCELoss, TeacherMode


class CachedRetrofitInfoNCELoss(CachedLossMixin, nn.Module):
    """:class:`RetrofitInfoNCELoss` with gradient caching (GradCache), for batches far larger than memory holds.

    The batch is embedded in mini-batches of ``mini_batch_size`` without a graph, the loss and its gradients with
    respect to the embeddings are computed in chunks of ``mini_batch_size`` anchors, and each mini-batch is then
    embedded again with a graph to carry those gradients into the model (sentence-transformers'
    ``CachedLossMixin``). Loss and gradients equal the plain loss's; memory grows with ``mini_batch_size``, not
    with the batch, so the batch size (and with it the number of in-batch negatives) is limited only by time.

    Args:
        model: the SentenceTransformer being trained.
        mini_batch_size: texts embedded at once, and anchors scored at once; it bounds memory, not the result.
        mini_batch_num_tokens: alternatively, bound each embedding mini-batch by its number of tokens.
        show_progress_bar: a progress bar over the mini-batches.
        scale, learnable_scale, max_scale, similarity_fct, query_negatives, false_negative_margin, margin_strategy,
        teacher_margin, teacher_mode, distill_weight, distill_temperature, gather_across_devices: as in
            :class:`RetrofitInfoNCELoss`, which this loss wraps as ``self.loss`` and which owns them.

    References:
        - Gao et al., Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup (GradCache), 2021:
          https://arxiv.org/abs/2101.06983
        - and those of :class:`RetrofitInfoNCELoss`.

    Requirements:
        1. As :class:`RetrofitInfoNCELoss`; the model must not start with a ``StaticEmbedding`` module.

    Inputs:
        As :class:`RetrofitInfoNCELoss`. The loss is returned as one tensor (the sum of its components).

    Relations:
        - Equals :class:`RetrofitInfoNCELoss` (loss and gradients, tested to 1e-5) at any ``mini_batch_size``.
        - With every extra off it equals
          :class:`~sentence_transformers.sentence_transformer.losses.CachedMultipleNegativesRankingLoss`.

    Example:
        ::

            from st_retrofit.losses import CachedRetrofitInfoNCELoss

            loss = CachedRetrofitInfoNCELoss(model, scale=100.0, mini_batch_size=64, false_negative_margin=0.1)
            args = SentenceTransformerTrainingArguments(output_dir="out", per_device_train_batch_size=4096)
            trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
    """

    # What the recipe's collator hands this loss as labels with ``mixing.labels: auto``: teacher scores and task
    # ids in a dict. A subclass inherits it; another loss class can declare it the same way.
    collator_labels: ClassVar[str] = "dict"

    def __init__(
        self,
        model,
        scale: float = 20.0,
        learnable_scale: bool = False,
        max_scale: float = 100.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        query_negatives: bool = False,
        false_negative_margin: float | None = None,
        margin_strategy: MarginStrategy = "absolute",
        teacher_margin: float | None = None,
        teacher_mode: TeacherMode = "mask",
        distill_weight: float = 0.0,
        distill_temperature: float | None = None,
        gather_across_devices: bool = False,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__()
        from sentence_transformers.base.losses.gradcache import has_static_embedding_input

        if has_static_embedding_input(model):
            raise ValueError(
                "CachedRetrofitInfoNCELoss does not support models starting with a StaticEmbedding module; "
                "use RetrofitInfoNCELoss instead."
            )
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        self.model = model
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self.loss = RetrofitInfoNCELoss(
            model,
            scale=scale,
            learnable_scale=learnable_scale,
            max_scale=max_scale,
            similarity_fct=similarity_fct,
            query_negatives=query_negatives,
            false_negative_margin=false_negative_margin,
            margin_strategy=margin_strategy,
            teacher_margin=teacher_margin,
            teacher_mode=teacher_mode,
            distill_weight=distill_weight,
            distill_temperature=distill_temperature,
            gather_across_devices=gather_across_devices,
            return_components=False,
        )

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | Mapping[str, Tensor] | None = None
    ) -> Tensor:
        return self.forward_cached(sentence_features, labels)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | Mapping[str, Tensor] | None = None, *, with_backward=False
    ) -> Tensor:
        """Loss over the whole batch, computed (and back-propagated, with ``with_backward``) per chunk of anchors."""
        embeddings = [torch.cat(column) for column in reps]
        teacher_scores, task_ids = self.loss._split_labels(labels, embeddings)
        candidates = self.loss.gather_candidates(embeddings, task_ids)
        anchors, batch_size = embeddings[0], embeddings[0].size(0)
        total = torch.zeros((), device=anchors.device)
        for begin in range(0, batch_size, self.mini_batch_size):
            rows = torch.arange(begin, min(begin + self.mini_batch_size, batch_size), device=anchors.device)
            chunk = self.loss.loss_for_rows(anchors[rows], rows, candidates, teacher_scores, task_ids, batch_size)
            if with_backward:
                # The candidates' graph is shared by every chunk, so it must survive until the last one.
                chunk.backward(retain_graph=bool(rows[-1] < batch_size - 1))
                chunk = chunk.detach()
            total = total + chunk
        return total

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.loss.get_config_dict(), "mini_batch_size": self.mini_batch_size}

    @property
    def citation(self) -> str:
        return self.loss.citation + "\n" + GRADCACHE_CITATION


GRADCACHE_CITATION = """@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}"""
