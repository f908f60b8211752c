"""The kinds of ``merge.method`` and ``st-retrofit merge --method``: each registered class says how many models it
takes, whether it merges relative to their base, what ``merge.json`` records, and merges.

- ``soup``, ``slerp``, ``task_arithmetic``, ``ties``, ``dare_ties``: built in (plain torch and PEFT's merge
  utilities, :mod:`st_retrofit.merge.core`);
- ``mergekit:<method>``: any method of mergekit, through ``SentenceTransformer.merge`` (the ``merge`` extra).

A new method subclasses :class:`MergeMethod` and is registered with ``@MERGE_METHODS.register``; the recipe key
and the command line then accept its name. Imports stay light: the recipe reads this module to check its field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from st_retrofit.merge.core import (
    MERGEKIT_PREFIX,
    MergeError,
    check_same_architecture,
    merge_with_mergekit,
    mergekit_method,
    same_buffer,
    slerp,
    soup,
    soup_weights,
)
from st_retrofit.registry import Kind, KindFamily, Registry

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


# mergekit methods whose base sentence-transformers' merge() takes from the first model, as our slerp does.
FIRST_MODEL_AS_BASE = frozenset({"slerp"})


class MergeMethod(Kind):
    """One way to merge models of one architecture.

    ``count`` is the exact number of models it merges (``None``: two or more); ``uses_base`` whether it merges
    relative to their common base, which must then be given; ``settings`` the arguments (``t``, ``density``)
    that ``merge.json`` records beside the weights."""

    count: ClassVar[int | None] = None
    uses_base: ClassVar[bool] = False
    takes_parameters: ClassVar[bool] = False  # mergekit's own parameters (a dict)
    settings: ClassVar[tuple[str, ...]] = ()

    def record_weights(self, weights: Sequence[float] | None, count: int, t: float) -> list[float]:
        """The weight ``merge.json`` and the card give each model."""
        return list(weights) if weights is not None else [1.0] * count

    def merge(
        self,
        models: Sequence[SentenceTransformer],
        states: list[dict[str, torch.Tensor]],
        base: SentenceTransformer | None,
        base_state: dict[str, torch.Tensor] | None,
        weights: Sequence[float] | None,
        t: float,
        density: float,
        parameters: dict[str, Any],
    ) -> dict[str, torch.Tensor] | SentenceTransformer:
        """The merged state dict (loaded into a copy of the first model), or a finished model."""
        raise NotImplementedError


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method", MergeMethod)
MergeMethodName = MERGE_METHODS.field()


@MERGE_METHODS.register
class Soup(MergeMethod):
    name = "soup"
    description = "the weighted average of the weights (normalized; uniform by default), mergekit's linear"

    def record_weights(self, weights, count, t):
        return [round(w, 6) for w in soup_weights(weights, count)]

    def merge(self, models, states, base, base_state, weights, t, density, parameters):
        return soup(states, weights)


@MERGE_METHODS.register
class Slerp(MergeMethod):
    name = "slerp"
    description = "spherical interpolation of two models, tensor by tensor, at t (0 = the first)"
    count = 2
    settings = ("t",)

    def record_weights(self, weights, count, t):
        return [round(1 - t, 6), round(t, 6)]

    def merge(self, models, states, base, base_state, weights, t, density, parameters):
        return slerp(states[0], states[1], t)


class TaskVectorMethod(MergeMethod):
    """``base + merge(model_i - base)`` with PEFT's function of the same name (``peft.utils.merge_utils``)."""

    modules = ("peft",)
    uses_base = True
    settings = ("density",)

    def merge(self, models, states, base, base_state, weights, t, density, parameters):
        return merge_task_vectors(base_state, states, self.name, weights, density)

    def combine(self, merge_utils: Any, vectors: list[torch.Tensor], scale: torch.Tensor, density: float) -> Any:
        """PEFT's merge of the task vectors of one tensor."""
        return getattr(merge_utils, self.name)(vectors, scale, density)


@MERGE_METHODS.register
class TaskArithmetic(TaskVectorMethod):
    name = "task_arithmetic"
    description = "the weighted sum of the task vectors (model - base), added to the base"
    settings = ()

    def combine(self, merge_utils, vectors, scale, density):
        return merge_utils.task_arithmetic(vectors, scale)


@MERGE_METHODS.register
class Ties(TaskVectorMethod):
    name = "ties"
    description = "TIES: each task vector trimmed to its largest density share, signs elected, then summed"


@MERGE_METHODS.register
class DareTies(TaskVectorMethod):
    name = "dare_ties"
    description = "DARE: task vectors randomly dropped to density and rescaled, then TIES' sign election"


@MERGE_METHODS.register
class Mergekit(KindFamily, MergeMethod):
    name = "mergekit"
    description = "mergekit:<method>: any method of mergekit, through SentenceTransformer.merge"

    def variant(self, name: str) -> MergekitMethod:
        return MergekitMethod(name)


class MergekitMethod(MergeMethod):
    """One mergekit method, merged by ``SentenceTransformer.merge``; our weights, ``t`` and ``density`` fill the
    parameters of the same name that it takes."""

    modules = ("mergekit",)
    takes_parameters = True
    description = "a mergekit method"

    def __init__(self, method: str) -> None:
        self.method, self.name = method, f"{MERGEKIT_PREFIX}{method}"

    @property
    def uses_base(self) -> bool:  # type: ignore[override]
        """mergekit's slerp counts as not: sentence-transformers makes the first model its base, as ours does."""
        from mergekit.merge_methods import BasePolicy

        return (
            self.method not in FIRST_MODEL_AS_BASE
            and mergekit_method(self.name).spec.contract.base == BasePolicy.REQUIRED
        )

    def check_environment(self) -> None:
        """mergekit is installed and has this method (a :class:`~st_retrofit.merge.core.MergeError` otherwise)."""
        mergekit_method(self.name)

    def merge(self, models, states, base, base_state, weights, t, density, parameters):
        return merge_with_mergekit(models, self.name, weights, base, t, density, parameters)


def merge_task_vectors(
    base: dict[str, torch.Tensor],
    state_dicts: Sequence[dict[str, torch.Tensor]],
    method: str = "task_arithmetic",
    weights: Sequence[float] | None = None,
    density: float = 0.5,
) -> dict:
    """``base + merge(finetuned_i - base)`` with PEFT's ``task_arithmetic``, ``ties`` or ``dare_ties``.

    Unlike a soup, weights are not normalized: ``task_arithmetic`` with one model and weight 1 returns that model,
    and weights above 1 extrapolate. ``density`` is the share of each task vector TIES/DARE keep."""
    import torch

    from st_retrofit.config import ConfigError
    from st_retrofit.extras import require_module

    merge_utils = require_module("peft.utils.merge_utils", f"merging task vectors ({method})")
    try:
        kind = MERGE_METHODS[method]
    except ConfigError as exc:
        raise MergeError(exc.message) from None
    if not isinstance(kind, TaskVectorMethod):
        task_vector_methods = [n for n, k in MERGE_METHODS.items() if isinstance(k, TaskVectorMethod)]
        raise MergeError(f"{method} merges no task vectors; the task-vector methods: {', '.join(task_vector_methods)}")
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density must be in (0, 1], got {density}")
    if weights is not None and len(weights) != len(state_dicts):
        raise MergeError(f"{len(weights)} weights for {len(state_dicts)} models; give one weight per model")
    scale = torch.tensor(list(weights) if weights is not None else [1.0] * len(state_dicts), dtype=torch.float32)
    merged = {}
    for key, tensor in base.items():
        if not tensor.is_floating_point():
            merged[key] = same_buffer(key, [base, *state_dicts])
            continue
        vectors = [state[key].float() - tensor.float() for state in state_dicts]
        merged[key] = (tensor.float() + kind.combine(merge_utils, vectors, scale, density)).to(tensor.dtype)
    return merged


def merge_method(method: str) -> MergeMethod:
    """The registered kind ``method`` names, checked against its environment (mergekit's methods: installed and
    known to mergekit).

    Raises:
        MergeError: no such method, or its library is missing.
    """
    from st_retrofit.config import ConfigError

    try:
        kind = MERGE_METHODS[method]
        kind.check_environment()
    except ConfigError as exc:
        raise MergeError(exc.message) from None
    return kind


def merge_models(
    models: Sequence[SentenceTransformer],
    method: str = "soup",
    weights: Sequence[float] | None = None,
    base: SentenceTransformer | None = None,
    t: float = 0.5,
    density: float = 0.5,
    names: Sequence[str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> SentenceTransformer:
    """Merge sentence-transformers models of one architecture into a new one (the first model's modules, config and
    tokenizer, with merged weights).

    Args:
        models: the fine-tuned models (two for ``slerp``).
        method: a :data:`MERGE_METHODS` name: ``soup``, ``slerp``, ``task_arithmetic``, ``ties`` or ``dare_ties``,
            or ``mergekit:<method>`` (``SentenceTransformer.merge`` with mergekit).
        weights: one per model; a soup normalizes them (uniform by default), task-vector methods scale each
            model's task vector by its weight (1 by default).
        base: the model they were fine-tuned from (task-vector methods only).
        t: ``slerp``'s position between the first (0) and the second (1) model.
        density: share of each task vector ``ties`` / ``dare_ties`` keep.
        names: how errors name the models (their paths or ids); defaults to ``model 0``, ``model 1``...
        parameters: ``mergekit:`` methods only: mergekit's parameters (``{"lambda": 1.0}``); ``weights``, ``t`` and
            ``density`` fill ``weight``, ``t`` and ``density`` where the method takes them and they are not given.

    Example::

        from st_retrofit.merge import merge_models
        from st_retrofit.models import load_model

        runs = [load_model(f"runs/manpages-dev/{name}/train/model") for name in ("recipe", "no-distillation", "scale-20")]
        soup = merge_models(runs)  # uniform soup
        soup.save_pretrained("runs/soup")

    References:
        - Wortsman et al., Model soups, 2022: https://arxiv.org/abs/2203.05482
        - Ilharco et al., Editing models with task arithmetic, 2023: https://arxiv.org/abs/2212.04089
        - Yadav et al., TIES-Merging, 2023: https://arxiv.org/abs/2306.01708
        - Yu et al., Language models are Super Mario (DARE), 2024: https://arxiv.org/abs/2311.03099
    """
    import copy

    if not models:
        raise MergeError("no models to merge")
    kind = merge_method(method)
    names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
    states = [model.state_dict() for model in models]
    base_state = base.state_dict() if base is not None else None
    check_same_architecture(states + ([base_state] if base_state is not None else []),
                            names + (["the base"] if base_state is not None else []))  # fmt: skip
    if parameters and not kind.takes_parameters:
        raise MergeError(f"parameters are for mergekit:<method>; {method} takes weights, t and density")
    if kind.count is not None and len(states) != kind.count:
        raise MergeError(f"{method} merges exactly {kind.count} models, got {len(states)}")
    if kind.uses_base and base_state is None:
        raise MergeError(f"{method} merges task vectors (model - base) and needs the base model")
    merged = kind.merge(models, states, base, base_state, weights, t, density, parameters or {})
    if not isinstance(merged, dict):
        return merged
    out = copy.deepcopy(models[0])
    out.load_state_dict(merged)
    return out
