from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import cos_sim
from sentence_transformers.util.distributed import all_gather, all_gather_with_grad, get_rank
from torch import Tensor, nn

logger = logging.getLogger(__name__)

MarginStrategy = Literal["absolute", "relative"]
TeacherMode = Literal["mask", "weight"]


class RetrofitInfoNCELoss(nn.Module):
    """InfoNCE for retrofitting: in-batch and hard negatives, false-negative handling without a second model
    forward, and optional distillation from the miner's teacher scores, all in one pass.

    Every anchor is scored against the positives and hard negatives of the whole batch (and, with
    ``query_negatives``, the other anchors); the loss is the cross-entropy of picking its own positive. On top of
    that the loss can leave out candidates that are likely unlabeled positives:

    - self-guided: a candidate whose (detached) similarity exceeds the positive's minus a margin is masked;
    - teacher-guided: the miner's teacher scores for the row's own hard negatives mask (or down-weight) those the
      teacher scores within ``teacher_margin`` of the positive;
    - task-aware: when rows carry task ids, candidates from another task are not negatives.

    With ``distill_weight > 0`` it adds a KL term between the teacher's and the student's distributions over each
    row's own candidates (positive and hard negatives).

    Args:
        model: the SentenceTransformer being trained.
        scale: inverse temperature; ``20`` is ``temperature=0.05`` (MNRL's default). Use the base model's training
            temperature: multilingual-e5 was trained at 0.01 (``scale=100``), and fine-tuning it at 20 made it worse.
        learnable_scale: learn the scale (as ``log(scale)``, CLIP style), starting from ``scale``.
        max_scale: upper bound of a learnable scale.
        similarity_fct: similarity between embeddings; cosine by default.
        query_negatives: also use the other anchors in the batch as negatives (GTE's query-to-query term).
        false_negative_margin: self-guided masking margin; ``None`` disables it.
        margin_strategy: ``"absolute"`` masks ``sim > sim_pos - margin``; ``"relative"`` masks
            ``sim > sim_pos - |sim_pos| * margin`` (correct for negative scores too).
        teacher_margin: teacher-guided handling of the row's hard negatives; ``None`` disables it. Needs teacher
            scores in the labels.
        teacher_mode: ``"mask"`` drops a hard negative the teacher scores above ``teacher_pos - teacher_margin``;
            ``"weight"`` scales its share of the partition function by ``clamp((t_pos - t_neg) / teacher_margin,
            0, 1)``, so it fades out as the teacher's score approaches the positive's.
        distill_weight: weight of the KL distillation term; ``0`` disables it. Needs teacher scores.
        distill_temperature: temperature of the teacher's softmax over its scores; ``None`` (default) uses the
            student's own, ``1 / scale``, so that a teacher whose scores equal the student's adds nothing. A
            temperature far above the student's (``1.0`` on cosine scores) makes the teacher's distribution nearly
            uniform, and distilling it pulls every candidate towards the positive.
        gather_across_devices: gather candidates from every process (DDP) before scoring, as MNRL does.
        return_components: with distillation on, return ``{"infonce": ..., "distill": ...}`` so that the trainer
            logs both; set ``False`` to get their sum (``MatryoshkaLoss`` needs a single tensor).

    References:
        - Tu et al., Retrofitting Small Multilingual Models for Retrieval, 2025: https://arxiv.org/abs/2510.14274
        - van den Oord et al., Representation Learning with Contrastive Predictive Coding (InfoNCE), 2018:
          https://arxiv.org/abs/1807.03748
        - Moreira et al., NV-Retriever: positive-aware hard-negative mining (margins relative to the positive),
          2024: https://arxiv.org/abs/2407.15831
        - Li et al., GTE: query-to-query negatives, 2023: https://arxiv.org/abs/2308.03281
        - Hinton et al., Distilling the Knowledge in a Neural Network, 2015: https://arxiv.org/abs/1503.02531

    Requirements:
        1. (anchor, positive) pairs, optionally with hard negatives: (anchor, positive, negative_1, ..., negative_n).
        2. Teacher-guided masking and distillation need teacher scores for (positive, negative_1, ..., negative_n).

    Inputs:
        +-------------------------------------------------+----------------------------------------------------+
        | Texts                                           | Labels                                             |
        +=================================================+====================================================+
        | (anchor, positive) pairs                        | none                                               |
        +-------------------------------------------------+----------------------------------------------------+
        | (anchor, positive, negative_1, ..., negative_n) | none                                               |
        +-------------------------------------------------+----------------------------------------------------+
        | (anchor, positive, negative_1, ..., negative_n) | teacher scores, shape (batch, 1 + n)               |
        +-------------------------------------------------+----------------------------------------------------+
        | any of the above                                | ``{"teacher_scores": (batch, 1 + n),               |
        |                                                 | "task_ids": (batch,)}``, either key optional       |
        +-------------------------------------------------+----------------------------------------------------+

    Relations:
        - With every extra off it equals :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`
          (loss and gradients, tested to 1e-5); with ``query_negatives`` it adds MNRL's ``query_to_query`` block.
        - :class:`~sentence_transformers.sentence_transformer.losses.GISTEmbedLoss` filters false negatives with a
          guide model's extra forward pass; this loss uses the student's own scores or the teacher scores the miner
          already computed, and supports any number of hard negatives.
        - :class:`CachedRetrofitInfoNCELoss` computes the same loss and gradients with bounded memory.

    Example:
        ::

            from datasets import Dataset
            from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

            from st_retrofit.losses import RetrofitInfoNCELoss

            model = SentenceTransformer("intfloat/multilingual-e5-small")
            train_dataset = Dataset.from_dict({
                "anchor": ["query: Wann wurde Mikaro gegründet?", "query: Who founded Rome?"],
                "positive": ["passage: Mikaro wurde 1723 gegründet.", "passage: Rome was founded by Romulus."],
                "negative": ["passage: Dabe wurde 1790 gegründet.", "passage: Paris was founded by the Parisii."],
                "label": [[0.91, 0.62], [0.88, 0.55]],  # teacher scores (positive, negative) from the miner
            })
            loss = RetrofitInfoNCELoss(model, scale=100.0, false_negative_margin=0.1, teacher_margin=0.05,
                                       distill_weight=0.5)
            trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
            trainer.train()
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
        return_components: bool = True,
    ) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if learnable_scale and not scale <= max_scale:
            raise ValueError(f"scale ({scale}) must not exceed max_scale ({max_scale}) when learnable")
        if margin_strategy not in ("absolute", "relative"):
            raise ValueError(f"Invalid margin_strategy: {margin_strategy!r}. Valid: 'absolute', 'relative'")
        if false_negative_margin is not None and false_negative_margin < 0:
            raise ValueError(f"false_negative_margin must be >= 0 or None, got {false_negative_margin}")
        if teacher_mode not in ("mask", "weight"):
            raise ValueError(f"Invalid teacher_mode: {teacher_mode!r}. Valid: 'mask', 'weight'")
        if teacher_margin is not None and (teacher_margin < 0 or (teacher_mode == "weight" and teacher_margin == 0)):
            raise ValueError(f"teacher_margin must be >= 0 (> 0 for 'weight'), got {teacher_margin}")
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        if distill_temperature is not None and distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {distill_temperature}")

        self.model = model
        self.learnable_scale = learnable_scale
        self.max_scale = max_scale
        if learnable_scale:
            self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(scale)), persistent=False)
        self.similarity_fct = similarity_fct
        self.query_negatives = query_negatives
        self.false_negative_margin = false_negative_margin
        self.margin_strategy = margin_strategy
        self.teacher_margin = teacher_margin
        self.teacher_mode = teacher_mode
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.gather_across_devices = gather_across_devices
        self.return_components = return_components
        self._margin_checked = False

    @property
    def scale(self) -> Tensor:
        """The current inverse temperature (clamped to ``max_scale`` when learnable)."""
        scale = self.log_scale.exp()
        return scale.clamp(max=self.max_scale) if self.learnable_scale else scale

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | Mapping[str, Tensor] | None = None
    ) -> Tensor | dict[str, Tensor]:
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], labels: Tensor | Mapping[str, Tensor] | None = None
    ) -> Tensor | dict[str, Tensor]:
        """The loss from the column embeddings (anchor, positive, negatives...); see the class docstring."""
        teacher_scores, task_ids = self._split_labels(labels, embeddings)
        candidates = self.gather_candidates(embeddings, task_ids)
        rows = torch.arange(embeddings[0].size(0), device=embeddings[0].device)
        return self.loss_for_rows(embeddings[0], rows, candidates, teacher_scores, task_ids, embeddings[0].size(0))

    def gather_candidates(self, embeddings: list[Tensor], task_ids: Tensor | None = None) -> dict[str, Any]:
        """Every candidate the anchors are scored against (from all processes with ``gather_across_devices``).

        Candidate columns are laid out as MNRL's: all positives, then all first negatives, and so on, each block
        holding ``world_rows`` rows; with ``query_negatives`` the anchors follow as a last block.
        """
        anchors, columns = embeddings[0], embeddings[1:]
        offset, task_all = 0, task_ids
        if self.gather_across_devices:
            anchors = all_gather_with_grad(anchors) if self.query_negatives else anchors
            columns = [all_gather_with_grad(column) for column in columns]
            task_all = all_gather(task_ids) if task_ids is not None else None
            offset = get_rank() * embeddings[0].size(0)
        blocks = columns + ([anchors] if self.query_negatives else [])
        return {
            "embeddings": torch.cat(blocks),
            "world_rows": columns[0].size(0),
            "n_columns": len(columns),
            "offset": offset,
            "task_ids": task_all,
        }

    def scores(
        self,
        anchors: Tensor,
        rows: Tensor,
        candidates: dict[str, Any],
        teacher_scores: Tensor | None = None,
        task_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Scaled logits of ``anchors`` (local batch rows ``rows``) over all candidates, and the masks.

        ``teacher_scores`` and ``task_ids`` are those of the same rows.

        Returns:
            ``(logits, log_weight, positive_index, own_columns)``: logits of shape (rows, candidates); log-weights
            of the same shape (0 keeps a candidate, -inf removes it, in between down-weights it); the column of
            each row's positive; and the columns of each row's own (positive, negative_1, ...), shape (rows, 1 + n).
        """
        world_rows, n_columns = candidates["world_rows"], candidates["n_columns"]
        global_rows = candidates["offset"] + rows
        local = torch.arange(len(rows), device=anchors.device)
        own_columns = global_rows[:, None] + world_rows * torch.arange(n_columns, device=anchors.device)[None, :]
        positive_index = own_columns[:, 0]

        similarity = self.similarity_fct(anchors, candidates["embeddings"])
        if self.query_negatives:
            # An anchor is not its own negative.
            similarity[local, n_columns * world_rows + global_rows] = -torch.inf

        # log-weights added to the logits: 0 keeps a candidate, -inf removes it from the partition function.
        log_weight = torch.zeros(similarity.shape, dtype=torch.float32, device=similarity.device)
        if self.false_negative_margin is not None:
            raw = similarity.detach()
            positive = raw[local, positive_index][:, None]
            margin = self.false_negative_margin * (positive.abs() if self.margin_strategy == "relative" else 1.0)
            masked = raw > positive - margin
            log_weight.masked_fill_(masked, -torch.inf)
            if not self._margin_checked:
                self._warn_if_mostly_masked(masked)
        if candidates["task_ids"] is not None:
            candidate_rows = torch.arange(similarity.size(1), device=anchors.device) % world_rows
            other_task = task_ids[:, None] != candidates["task_ids"][candidate_rows][None, :]
            log_weight.masked_fill_(other_task, -torch.inf)
        if self.teacher_margin is not None:
            if teacher_scores is None:
                raise ValueError("teacher_margin needs teacher scores as labels, shape (batch, 1 + num_negatives)")
            gap = (teacher_scores[:, :1] - teacher_scores[:, 1:]).float()  # teacher positive minus each negative
            if self.teacher_mode == "mask":
                own_log_weight = torch.zeros_like(gap).masked_fill(gap < self.teacher_margin, -torch.inf)
            else:
                own_log_weight = (gap / self.teacher_margin).clamp(0, 1).log()
            log_weight[local[:, None], own_columns[:, 1:]] += own_log_weight
        log_weight[local, positive_index] = 0.0  # the positive is never masked

        return similarity * self.scale, log_weight, positive_index, own_columns

    def _warn_if_mostly_masked(self, masked: Tensor) -> None:
        """Once, on the first batch: warn when the self-guided margin leaves less than half the negatives. Models
        trained at a low temperature (multilingual-e5) score every pair within a narrow band, where an absolute
        margin of 0.1 masks nearly everything and the contrastive term goes silent without any error."""
        self._margin_checked = True
        share = (masked.sum() - masked.size(0)).item() / max(masked.numel() - masked.size(0), 1)  # positives aside
        if share > 0.5:
            logger.warning(
                "false_negative_margin=%s (%s) masks %.0f%% of the negatives in the first batch: the InfoNCE term "
                "has little left to learn from. With compressed scores (multilingual-e5) use a smaller margin, e.g. "
                "margin_strategy='relative' with 0.05 (the miner's relative_margin).",
                self.false_negative_margin, self.margin_strategy, 100 * share,
            )  # fmt: skip

    def loss_for_rows(
        self,
        anchors: Tensor,
        rows: Tensor,
        candidates: dict[str, Any],
        teacher_scores: Tensor | None,
        task_ids: Tensor | None,
        batch_size: int,
    ) -> Tensor | dict[str, Tensor]:
        """The loss terms of ``rows``, summed and divided by ``batch_size`` (so that chunks add up to the mean)."""
        teacher_rows = teacher_scores[rows] if teacher_scores is not None else None
        task_rows = task_ids[rows] if task_ids is not None else None
        logits, log_weight, positive_index, own_columns = self.scores(
            anchors, rows, candidates, teacher_rows, task_rows
        )
        infonce = F.cross_entropy(logits + log_weight, positive_index, reduction="sum") / batch_size
        if self.distill_weight == 0:
            return infonce
        distill = self.distill_weight * self._distillation(logits, own_columns, teacher_rows) / batch_size
        if self.return_components:
            return {"infonce": infonce, "distill": distill}
        return infonce + distill

    def _distillation(self, logits: Tensor, own_columns: Tensor, teacher_scores: Tensor | None) -> Tensor:
        if teacher_scores is None:
            raise ValueError("distill_weight > 0 needs teacher scores as labels, shape (batch, 1 + num_negatives)")
        rows = torch.arange(logits.size(0), device=logits.device)[:, None]
        # Unmasked on purpose: a hard negative the teacher scores close to the positive is masked from InfoNCE,
        # and distillation is where the student learns that closeness.
        student = logits[rows, own_columns]
        temperature = self.distill_temperature or 1.0 / float(self.scale.detach())
        teacher = F.softmax(teacher_scores.float() / temperature, dim=1)
        return F.kl_div(F.log_softmax(student.float(), dim=1), teacher, reduction="sum")

    @staticmethod
    def _split_labels(labels, embeddings: list[Tensor]) -> tuple[Tensor | None, Tensor | None]:
        if labels is None:
            return None, None
        if isinstance(labels, Mapping):
            teacher, task_ids = labels.get("teacher_scores"), labels.get("task_ids")
        else:
            teacher, task_ids = labels, None
        if teacher is not None and teacher.shape != (embeddings[0].size(0), len(embeddings) - 1):
            raise ValueError(
                f"teacher scores must have shape (batch, 1 + num_negatives) = "
                f"({embeddings[0].size(0)}, {len(embeddings) - 1}), got {tuple(teacher.shape)}"
            )
        return teacher, task_ids

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": round(float(self.scale), 4),
            "learnable_scale": self.learnable_scale,
            "similarity_fct": getattr(self.similarity_fct, "__name__", str(self.similarity_fct)),
            "query_negatives": self.query_negatives,
            "false_negative_margin": self.false_negative_margin,
            "margin_strategy": self.margin_strategy,
            "teacher_margin": self.teacher_margin,
            "teacher_mode": self.teacher_mode,
            "distill_weight": self.distill_weight,
            "distill_temperature": self.distill_temperature,
            "gather_across_devices": self.gather_across_devices,
        }

    @property
    def citation(self) -> str:
        """BibTeX of the retrofitting paper, InfoNCE, and the method behind each option that is switched on."""
        entries = [CITATIONS["retrofitting"], CITATIONS["infonce"]]
        if self.query_negatives:
            entries.append(CITATIONS["gte"])
        if self.false_negative_margin is not None or self.teacher_margin is not None:
            entries.append(CITATIONS["nv_retriever"])
        if self.distill_weight > 0:
            entries.append(CITATIONS["distillation"])
        return "\n".join(entries)


CITATIONS = {
    "retrofitting": """@article{tu2025retrofitting,
    title={Retrofitting Small Multilingual Models for Retrieval: Matching 7B Performance with 300M Parameters},
    author={Tu, Lifu and Zhou, Yingbo and Yavuz, Semih},
    journal={arXiv preprint arXiv:2510.14274},
    year={2025}
}""",
    "infonce": """@article{oord2018representation,
    title={Representation Learning with Contrastive Predictive Coding},
    author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
    journal={arXiv preprint arXiv:1807.03748},
    year={2018}
}""",
    "gte": """@article{li2023towards,
    title={Towards General Text Embeddings with Multi-stage Contrastive Learning},
    author={Li, Zehan and Zhang, Xin and Zhang, Yanzhao and Long, Dingkun and Xie, Pengjun and Zhang, Meishan},
    journal={arXiv preprint arXiv:2308.03281},
    year={2023}
}""",
    "nv_retriever": """@article{moreira2024nvretriever,
    title={NV-Retriever: Improving text embedding models with effective hard-negative mining},
    author={Moreira, Gabriel de Souza P. and Osmulski, Radek and Xu, Mengyao and Ak, Ronay and Schifferer, Benedikt and Oldridge, Even},
    journal={arXiv preprint arXiv:2407.15831},
    year={2024}
}""",
    "distillation": """@article{hinton2015distilling,
    title={Distilling the Knowledge in a Neural Network},
    author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
    journal={arXiv preprint arXiv:1503.02531},
    year={2015}
}""",
}
