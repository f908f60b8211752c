"""Which entry of the recipe collator's label dict each loss reads (light: no torch, read when a recipe is checked).

The collator hands the losses ``{"teacher_scores", "task_ids", "teacher_embeddings"}``; st-retrofit's losses read
the dict, while sentence-transformers' distillation losses take one tensor. ``WeightedLossSum`` gives those theirs.
"""

from __future__ import annotations

# sentence-transformers losses that take one of the collator's labels as their plain label. Their
# compute_loss_from_embeddings reads the teacher embeddings as one tensor per text column (what their forward makes
# of a (batch, columns, dim) label), and the teacher scores as they are.
LIBRARY_LABEL_KEYS = {
    "EmbedDistillLoss": "teacher_embeddings",
    "MSELoss": "teacher_embeddings",
    "DistillKLDivLoss": "teacher_scores",  # (batch, 1 + negatives)
}
PER_COLUMN = {"teacher_embeddings"}


def label_key(loss_class: type) -> str | None:
    """The label entry a library loss reads, or None (st-retrofit's losses read the whole dict)."""
    return next((LIBRARY_LABEL_KEYS[c.__name__] for c in loss_class.__mro__ if c.__name__ in LIBRARY_LABEL_KEYS), None)


def reads_teacher_embeddings(loss_class: type) -> bool:
    """Whether the loss needs the miner's teacher embeddings in its labels."""
    return (
        bool(getattr(loss_class, "needs_teacher_embeddings", False)) or label_key(loss_class) == "teacher_embeddings"
    )
