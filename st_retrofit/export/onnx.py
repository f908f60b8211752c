"""Export a SentenceTransformer to ONNX, and int8 by onnxruntime's dynamic quantization, without optimum.

What this adds: sentence-transformers' ``export_optimized_onnx_model`` / ``export_dynamic_quantized_onnx_model`` and its
``backend="onnx"`` load through optimum, which installs beside no transformers 5 release. Here the graph is traced
with ``torch.onnx.export`` and quantized with ``onnxruntime.quantization`` directly. The graph runs the whole model
(transformer, pooling, Dense layers, normalization: EmbeddingGemma's two projections included) and has two outputs:

- ``last_hidden_state``: the transformer's token embeddings, the output optimum's ``ORTModelForFeatureExtraction``
  reads, so a user with a working optimum loads the folder with
  ``SentenceTransformer(folder, backend="onnx", model_kwargs={"file_name": "onnx/model_qint8.onnx"})``;
- ``sentence_embedding``: the finished embedding, for plain onnxruntime users (and :mod:`st_retrofit.export.runtime`).

Files go where sentence-transformers looks for them: ``onnx/model.onnx`` and ``onnx/model_qint8.onnx``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_retrofit.config import ConfigError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"
INT8_FILE = "onnx/model_qint8.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")
OPSET = 17  # onnxruntime >= 1.14 runs it; LayerNormalization is native from 17
# The module types the traced graph reproduces (by class name: sentence-transformers moved them between packages).
EXPORTABLE_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


class ExportError(ConfigError):
    """A model that cannot be exported (an unsupported module), or an output folder that is in the way."""


def check_exportable(model: SentenceTransformer) -> None:
    """Raise :class:`ExportError` naming the first module the ONNX graph cannot reproduce."""
    for index, module in enumerate(model):
        kind = type(module).__name__
        if kind not in EXPORTABLE_MODULES:
            raise ExportError(
                f"modules[{index}]",
                f"{kind} cannot be exported to ONNX here (supported: {', '.join(EXPORTABLE_MODULES)}); "
                "keep this model on the torch backend",
            )
    if type(model[0]).__name__ != "Transformer":
        raise ExportError("modules[0]", f"the first module must be a Transformer, got {type(model[0]).__name__}")


def _graph(model: SentenceTransformer, input_names: Sequence[str]) -> torch.nn.Module:
    """The model's modules as one traceable module: token ids in, (token embeddings, sentence embedding) out."""
    import torch

    class SentenceEmbeddingGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.modules_ = torch.nn.ModuleList(list(model))

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features: dict[str, Any] = dict(zip(input_names, inputs, strict=True))
            token_embeddings = None
            for module in self.modules_:
                features = module(features)
                if token_embeddings is None:
                    token_embeddings = features["token_embeddings"]
            return token_embeddings, features["sentence_embedding"]

    return SentenceEmbeddingGraph().eval()


@contextlib.contextmanager
def _masks_without_vmap() -> Iterator[None]:
    """transformers builds some attention masks (Gemma 3's sliding window) by ``torch.vmap`` over index functions,
    which the ONNX tracer cannot follow; for the trace, build them by broadcasting the same index functions instead
    (what optimum's exporter does). Exact for index-based mask functions, which transformers' own are."""
    try:
        from transformers import masking_utils
    except ImportError:  # an older transformers without the module builds masks without vmap
        yield
        return
    original = getattr(masking_utils, "_vmap_expansion_sdpa", None)
    expand = getattr(masking_utils, "_non_vmap_expansion_sdpa", None)
    if original is None or expand is None:
        yield
        return

    def broadcast(mask_function):
        return lambda *indices: mask_function(*expand(*indices))

    # Under vmap, indexing goes through a dynamo-traced op (TransformGetItemToIndex); broadcasting indexes plainly.
    transform = getattr(masking_utils, "TransformGetItemToIndex", None)
    masking_utils._vmap_expansion_sdpa = broadcast
    if transform is not None:
        masking_utils.TransformGetItemToIndex = contextlib.nullcontext
    try:
        yield
    finally:
        masking_utils._vmap_expansion_sdpa = original
        if transform is not None:
            masking_utils.TransformGetItemToIndex = transform


def export_onnx(model: SentenceTransformer, path: str | Path) -> Path:
    """Trace ``model`` (fp32, CPU) into one ONNX file at ``path`` with dynamic batch and sequence axes.

    The file is written next to its destination and renamed into place, so an interrupted export leaves none.
    """
    import torch

    check_exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = model.preprocess(["a sentence to trace the graph with", "and a second, longer one to pad the first"])
    input_names = [name for name in INPUT_NAMES if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in (*input_names, "last_hidden_state")}
    axes["sentence_embedding"] = {0: "batch"}
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ExportError("model", f"export needs float32 weights, got {dtype}; load the model in float32")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings(), _masks_without_vmap():
            # The tracer warns at every shape-dependent Python branch in transformers and pooling; they compare a
            # tensor with itself (mask and sequence lengths), and tests run the graph at other batch and sequence
            # sizes than it was traced with.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _graph(model.cpu(), input_names),
                tuple(sample[name].cpu() for name in input_names),
                str(partial),
                input_names=input_names,
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter traces transformers 5's encoders; dynamo needs onnxscript
            )
        os.replace(partial, path)
    except (RuntimeError, TypeError, ValueError) as exc:  # the tracer's, for an architecture it cannot follow
        architecture = type(getattr(model[0], "auto_model", model[0])).__name__
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError("model", f"{architecture} could not be traced to ONNX ({reason})") from exc
    finally:
        partial.unlink(missing_ok=True)
    return path


def quantize_int8(source: str | Path, path: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of ``source`` into ``path``: weights per output channel (int8, range
    reduced to 7 bits so that CPUs without VNNI do not saturate), activations quantized per call."""
    from st_retrofit.extras import require_module

    quantization = require_module("onnxruntime.quantization", "int8 quantization")
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        quantization.quantize_dynamic(
            str(source), str(partial), per_channel=True, reduce_range=True, weight_type=quantization.QuantType.QInt8
        )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def export_model_folder(
    model: str, output: str | Path, int8: bool = False, texts: Sequence[str] | None = None, openvino: bool = False
) -> dict[str, Any]:
    """``st-retrofit export``: ``model`` (a folder, Hub id or ``offline:`` name) saved into the new folder
    ``output`` with ``onnx/model.onnx`` (and ``onnx/model_qint8.onnx`` with ``int8``), with ``openvino`` also
    ``openvino/openvino_model.xml`` (and ``openvino/openvino_model_int8_weights.xml`` with ``int8``), each checked
    against the torch model by the cosine of their embeddings of ``texts``
    (:data:`~st_retrofit.export.agreement.SAMPLE_TEXTS`).

    The folder is built beside ``output`` and renamed into place at the end: it appears whole or not at all.

    Returns:
        ``{"files": [...], "agreement": {file: {"mean": ..., "min": ...}}}``, also written to
        ``onnx/agreement.json``.
    """
    import json

    from tqdm.auto import tqdm

    from st_retrofit.export.agreement import SAMPLE_TEXTS, cosine_agreement
    from st_retrofit.export.openvino import OPENVINO_FILE, OPENVINO_INT8_FILE, compress_int8_weights, convert_openvino
    from st_retrofit.export.runtime import load_onnx, load_openvino
    from st_retrofit.models.resolve import load_model, resolve_run_folder

    output = Path(output)
    if output.exists():
        raise ExportError("output", f"{output} already exists; choose a new folder")
    torch_model = load_model(resolve_run_folder(model), device="cpu")
    check_exportable(torch_model)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    steps = ["save", "export", *(["int8"] if int8 else []), *(["openvino"] if openvino else []),
             *(["openvino int8"] if openvino and int8 else []), "check"]  # fmt: skip
    try:
        with tqdm(total=len(steps), desc=f"Exporting {model}", unit="step") as bar:
            torch_model.save_pretrained(str(work))
            bar.update()
            files = [export_onnx(torch_model, work / ONNX_FILE)]
            bar.update()
            if int8:
                files.append(quantize_int8(files[0], work / INT8_FILE))
                bar.update()
            if openvino:
                files.append(convert_openvino(files[0], work / OPENVINO_FILE))
                bar.update()
                if int8:
                    files.append(compress_int8_weights(files[-1], work / OPENVINO_INT8_FILE))
                    bar.update()
            loaders = {".onnx": load_onnx, ".xml": load_openvino}
            agreement = {
                file.relative_to(work).as_posix(): cosine_agreement(torch_model,
                                                                    loaders[file.suffix](torch_model, file),
                                                                    texts or SAMPLE_TEXTS)
                for file in files
            }  # fmt: skip
            bar.update()
        report = {"files": sorted(agreement), "agreement": agreement}
        (work / "onnx" / "agreement.json").write_text(json.dumps(report, indent=2))
        os.replace(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report
