"""Model merging for sentence-transformers models fine-tuned from one base: soups, slerp, task arithmetic, TIES; the
tensor operations here, the methods that use them in :mod:`st_retrofit.merge.methods` (``MERGE_METHODS``).

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
from typing import TYPE_CHECKING, Any

from st_retrofit.config import StRetrofitError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

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
            "or use a built-in method: soup, slerp, task_arithmetic, ties, dare_ties"
        ) from None
    known = sorted(getattr(m, "name", None) or m.spec.name for m in registered_methods())
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {MERGEKIT_PREFIX}{close[0]}?)" if close else f"; mergekit has: {', '.join(known)}"
        raise MergeError(f"unknown mergekit method {name!r}{hint}")
    return get(name)


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
            merged[key] = same_buffer(key, state_dicts)
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
        key: slerp_tensor(tensor, b[key], t) if tensor.is_floating_point() else same_buffer(key, [a, b])
        for key, tensor in a.items()
    }


def same_buffer(key: str, state_dicts: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    import torch

    first = state_dicts[0][key]
    for state in state_dicts[1:]:
        if not torch.equal(state[key], first):
            raise MergeError(f"integer tensor {key!r} differs between the models: not the same architecture")
    return first.clone()


def merge_with_mergekit(models, method, weights, base, t, density, parameters) -> SentenceTransformer:
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
