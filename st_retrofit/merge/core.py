"""Model merging for sentence-transformers models fine-tuned from one base: soups, slerp, task arithmetic, TIES.

sentence-transformers 6.2 added ``SentenceTransformer.merge()`` through mergekit (19 methods). Every mergekit
method is reachable here as ``mergekit:<method>`` (``mergekit:model_stock``, ``mergekit:della``...), passed to
``SentenceTransformer.merge`` with its ``parameters``. The five built-in methods need no mergekit (PEFT's merge
utilities and plain torch) and give the same tensors as mergekit's ``linear``, ``task_arithmetic`` and ``ties``
(tested); ``slerp`` differs on purpose: it interpolates each tensor's norm linearly, mergekit's keeps the sine
weights' norm. What st-retrofit adds around either: soups of run folders and checkpoints, the recipe's ``merge``
section, ``merge.json`` and a card section naming the ingredients and weights.

- ``soup``: the (weighted) average of the weights (Wortsman et al., 2022), what EmbeddingGemma's release is;
- ``slerp``: spherical interpolation of two models, tensor by tensor (Qwen3-Embedding merges checkpoints so);
- ``task_arithmetic``, ``ties``, ``dare_ties``: merges of *task vectors* (fine-tuned minus base weights; Ilharco et
  al., 2023; Yadav et al., 2023; Yu et al., 2024) through PEFT's own ``peft.utils.merge_utils``, added back to the
  base.

Every input is a ``SentenceTransformer`` of the same architecture: the same tensor names and shapes (the first
mismatch is named). Integer buffers (position ids) are taken from the first model and must agree. LoRA runs are
merged after their adapters are folded in (the train stage's ``model/`` folder is).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from st_retrofit.config import StRetrofitError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

MergeMethod = Literal["soup", "slerp", "task_arithmetic", "ties", "dare_ties"]
BUILT_IN_METHODS = ("soup", "slerp", "task_arithmetic", "ties", "dare_ties")
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties")
MERGEKIT_PREFIX = "mergekit:"


class MergeError(StRetrofitError, ValueError):
    """The models cannot be merged as asked (different architectures, wrong number of inputs or weights)."""


def mergekit_method(method: str) -> Any:
    """The mergekit method ``mergekit:<name>`` names (its spec says which parameters and base it takes).

    Raises:
        MergeError: mergekit is missing, or has no such method.
    """
    name = method.removeprefix(MERGEKIT_PREFIX)
    try:
        from mergekit.merge_methods import get, registered_methods
    except ImportError:
        raise MergeError(
            f"{method} needs mergekit (sentence-transformers' merge backend): pip install 'st-retrofit[merge]'; "
            f"or use a built-in method: {', '.join(BUILT_IN_METHODS)}"
        ) from None
    known = sorted(getattr(m, "name", None) or m.spec.name for m in registered_methods())
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {MERGEKIT_PREFIX}{close[0]}?)" if close else f"; mergekit has: {', '.join(known)}"
        raise MergeError(f"unknown mergekit method {name!r}{hint}")
    return get(name)


def uses_base(method: str) -> bool:
    """Whether ``method`` merges relative to the models' common base (task vectors), which it must then be given.
    mergekit's slerp counts as not: sentence-transformers makes the first model its base, as ours does."""
    if not method.startswith(MERGEKIT_PREFIX):
        return method in TASK_VECTOR_METHODS
    from mergekit.merge_methods import BasePolicy

    return method != f"{MERGEKIT_PREFIX}slerp" and mergekit_method(method).spec.contract.base == BasePolicy.REQUIRED


def check_method(method: str) -> None:
    """Raise :class:`MergeError` unless ``method`` is built in or an installed mergekit method."""
    if method.startswith(MERGEKIT_PREFIX):
        mergekit_method(method)
    elif method not in BUILT_IN_METHODS:
        close = difflib.get_close_matches(method, BUILT_IN_METHODS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(BUILT_IN_METHODS)}"
        raise MergeError(f"unknown merge method {method!r}{hint}, or mergekit:<method> with mergekit installed")


def check_same_architecture(state_dicts: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Raise :class:`MergeError` naming the first tensor that one model lacks or has in another shape."""
    reference, first = state_dicts[0], names[0]
    for state, name in zip(state_dicts[1:], names[1:], strict=True):
        for key in reference.keys() - state.keys():
            raise MergeError(f"{name} has no tensor {key!r}, which {first} has: not the same architecture")
        for key in state.keys() - reference.keys():
            raise MergeError(f"{name} has a tensor {key!r} that {first} lacks: not the same architecture")
        for key, tensor in reference.items():
            if tensor.shape != state[key].shape:
                raise MergeError(
                    f"tensor {key!r} is {tuple(state[key].shape)} in {name} but {tuple(tensor.shape)} in {first}: "
                    f"not the same architecture"
                )


def soup_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """A soup's weights, normalized to sum to 1 (uniform when ``None``)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise MergeError(f"{len(weights)} weights for {count} models; give one weight per model")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise MergeError(f"weights must be >= 0 and not all 0, got {list(weights)}")
    return [float(w) / sum(weights) for w in weights]


def soup(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None) -> dict:
    """The weighted average of every floating-point tensor (weights normalized to sum to 1; uniform by default)."""
    import torch

    shares = soup_weights(weights, len(state_dicts))
    merged = {}
    for key, tensor in state_dicts[0].items():
        if not tensor.is_floating_point():
            merged[key] = _same_buffer(key, state_dicts)
            continue
        total = torch.zeros_like(tensor, dtype=torch.float32)
        for share, state in zip(shares, state_dicts, strict=True):
            total += share * state[key].float()
        merged[key] = total.to(tensor.dtype)
    return merged


def slerp_tensor(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation between two tensors seen as flat vectors: ``t=0`` gives ``a``, ``t=1`` gives ``b``.
    The norm is interpolated linearly; nearly parallel vectors fall back to linear interpolation."""
    import torch

    x, y = a.flatten().float(), b.flatten().float()
    nx, ny = x.norm(), y.norm()
    if nx < eps or ny < eps:
        return torch.lerp(a.float(), b.float(), t).to(a.dtype)
    cos = torch.clamp(torch.dot(x / nx, y / ny), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:
        return torch.lerp(a.float(), b.float(), t).to(a.dtype)
    sin = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) / sin) * (x / nx) + (torch.sin(t * omega) / sin) * (y / ny)
    out = direction * ((1 - t) * nx + t * ny)
    return out.view_as(a).to(a.dtype)


def slerp(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float = 0.5) -> dict:
    """Spherical interpolation of two models, tensor by tensor (:func:`slerp_tensor`)."""
    if not 0.0 <= t <= 1.0:
        raise MergeError(f"slerp t must be in [0, 1], got {t}")
    return {
        key: slerp_tensor(tensor, b[key], t) if tensor.is_floating_point() else _same_buffer(key, [a, b])
        for key, tensor in a.items()
    }


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

    from st_retrofit.extras import require_module

    merge_utils = require_module("peft.utils.merge_utils", f"merging task vectors ({method})")
    if method not in TASK_VECTOR_METHODS:
        raise MergeError(f"unknown task-vector method {method!r}; known: {list(TASK_VECTOR_METHODS)}")
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density must be in (0, 1], got {density}")
    if weights is not None and len(weights) != len(state_dicts):
        raise MergeError(f"{len(weights)} weights for {len(state_dicts)} models; give one weight per model")
    scale = torch.tensor(list(weights) if weights is not None else [1.0] * len(state_dicts), dtype=torch.float32)
    merged = {}
    for key, tensor in base.items():
        if not tensor.is_floating_point():
            merged[key] = _same_buffer(key, [base, *state_dicts])
            continue
        vectors = [state[key].float() - tensor.float() for state in state_dicts]
        if method == "task_arithmetic":
            delta = merge_utils.task_arithmetic(vectors, scale)
        else:
            delta = getattr(merge_utils, method)(vectors, scale, density)
        merged[key] = (tensor.float() + delta).to(tensor.dtype)
    return merged


def _same_buffer(key: str, state_dicts: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    import torch

    first = state_dicts[0][key]
    for state in state_dicts[1:]:
        if not torch.equal(state[key], first):
            raise MergeError(f"integer tensor {key!r} differs between the models: not the same architecture")
    return first.clone()


def merge_models(
    models: Sequence[SentenceTransformer],
    method: MergeMethod = "soup",
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
        method: ``soup``, ``slerp``, ``task_arithmetic``, ``ties`` or ``dare_ties``, or ``mergekit:<method>``
            (``SentenceTransformer.merge`` with mergekit).
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
    names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
    states = [model.state_dict() for model in models]
    base_state = base.state_dict() if base is not None else None
    check_same_architecture(states + ([base_state] if base_state is not None else []),
                            names + (["the base"] if base_state is not None else []))  # fmt: skip
    if method.startswith(MERGEKIT_PREFIX):
        return _mergekit(models, method, weights, base, t, density, parameters)
    if parameters:
        raise MergeError(f"parameters are for mergekit:<method>; {method} takes weights, t and density")
    if method == "soup":
        merged = soup(states, weights)
    elif method == "slerp":
        if len(states) != 2:
            raise MergeError(f"slerp merges exactly 2 models, got {len(states)}")
        merged = slerp(states[0], states[1], t)
    elif method in TASK_VECTOR_METHODS:
        if base_state is None:
            raise MergeError(f"{method} merges task vectors (model - base) and needs the base model")
        merged = merge_task_vectors(base_state, states, method, weights, density)
    else:
        check_method(method)
    out = copy.deepcopy(models[0])
    out.load_state_dict(merged)
    return out


def _mergekit(models, method, weights, base, t, density, parameters) -> SentenceTransformer:
    """``SentenceTransformer.merge`` with mergekit's ``method``; our arguments fill the parameters it takes."""
    spec = mergekit_method(method).spec
    accepted = {parameter.name for parameter in spec.parameters}
    given = dict(parameters or {})
    for name, value in (("weight", list(weights) if weights is not None else None), ("t", t), ("density", density)):
        if name in accepted and name not in given and value is not None:
            given[name] = value
    try:
        return type(models[0]).merge(
            list(models), method.removeprefix(MERGEKIT_PREFIX), base_model=base, parameters=given or None
        )
    except (ValueError, TypeError) as exc:  # mergekit's and sentence-transformers' checks of the inputs
        raise MergeError(f"{method}: {' '.join(str(exc).split())}") from None
