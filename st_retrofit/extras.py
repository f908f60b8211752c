"""Optional dependencies: which extra brings which package, and one clear error when it is missing.

The core (losses, miner, sampler, collator, recipes, training) needs sentence-transformers, datasets and numpy;
everything else comes with an extra (``pip install "st-retrofit[synth]"``), listed in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

from st_retrofit.config import ConfigError

# Import name -> the extra that installs it.
EXTRAS = {
    "peft": "lora",
    "openai": "synth",
    "jsonschema": "synth",
    "py3langid": "synth",
    "datasketch": "synth",
    "llguidance": "synth",
    "mteb": "eval",
    "faiss": "faiss",
    "matplotlib": "plots",
    "onnx": "onnx",
    "mergekit": "merge",
    "onnxruntime": "onnx",
    "openvino": "openvino",
    "nncf": "openvino",
}


class MissingExtraError(ConfigError):
    """A feature's optional dependency is not installed; the message names the extra that brings it."""


def has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_module(module: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose`` (``"mteb evaluation"``), or raise :class:`MissingExtraError` naming the
    extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module.split(".")[0]]
        raise MissingExtraError(
            "", f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install 'st-retrofit[{extra}]'"
        ) from None


def pyplot(figure: str) -> ModuleType | None:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` (with a warning naming the ``plots`` extra)
    when matplotlib is missing: a plot illustrates a result, so its absence never stops a stage."""
    if not has_module("matplotlib"):
        logging.getLogger(__name__).warning(
            "Not drawing %s: matplotlib is not installed (pip install 'st-retrofit[plots]')", figure
        )
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
