"""What runs a model that only encodes (the miner's teacher): a registry of encoder backends.

``torch`` runs the model as loaded (``teacher_dtype`` casts it); ``onnx`` and ``onnx-int8`` run the graph
:func:`~st_retrofit.export.onnx.export_onnx` traced from it on onnxruntime, ``openvino`` and ``openvino-int8`` the
same graph converted to OpenVINO (:mod:`st_retrofit.export.openvino`); each file is made once into
``$ST_RETROFIT_CACHE/onnx/<model fingerprint>/`` and reused. Each backend names itself in the embedding cache's
namespace (int8 vectors differ from fp32's, onnxruntime's int8 ones with the batch they were computed in too), so
vectors of two backends are never mixed.

A new backend is a subclass registered with ``@ENCODER_BACKENDS.register`` (or its older name
:func:`register_encoder_backend`); the recipe keys ``mining.backend`` and ``eval.backends`` accept every registered
name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from st_retrofit.registry import Kind, Registry

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class EncoderBackend(Kind):
    """One way to run an encoder. Subclasses set ``name``, ``description`` and ``modules`` (what must be
    importable) and implement :meth:`prepare`."""

    supports_dtype: ClassVar[bool] = False  # whether mining.teacher_dtype applies

    def prepare(self, model: SentenceTransformer, dtype: str = "float32") -> SentenceTransformer:
        raise NotImplementedError


ENCODER_BACKENDS: Registry[EncoderBackend] = Registry("encoder backend", EncoderBackend)
EncoderBackendName = ENCODER_BACKENDS.field()
register_encoder_backend = ENCODER_BACKENDS.register  # the name of 0.2.0's first releases


@register_encoder_backend
class TorchBackend(EncoderBackend):
    name = "torch"
    description = "the model as sentence-transformers loads it, cast to mining.teacher_dtype"
    supports_dtype = True

    def prepare(self, model: SentenceTransformer, dtype: str = "float32") -> SentenceTransformer:
        if dtype != "float32":
            import torch

            model.to(getattr(torch, dtype))
        return model


@register_encoder_backend
class OnnxBackend(EncoderBackend):
    name = "onnx"
    description = "the model's ONNX graph (fp32) run by onnxruntime"
    modules = ("onnx", "onnxruntime")
    int8: ClassVar[bool] = False

    def prepare(self, model: SentenceTransformer, dtype: str = "float32") -> SentenceTransformer:
        from st_retrofit.export.runtime import load_onnx

        return load_onnx(model, exported_file(model, self.int8))


@register_encoder_backend
class OnnxInt8Backend(OnnxBackend):
    name = "onnx-int8"
    description = "the model's ONNX graph with int8 weights (onnxruntime dynamic quantization, per channel)"
    int8 = True


@register_encoder_backend
class OpenVinoBackend(EncoderBackend):
    name = "openvino"
    description = "the model's ONNX graph converted to OpenVINO (fp32) and run by OpenVINO's CPU plugin"
    modules = ("onnx", "openvino")
    int8: ClassVar[bool] = False

    def prepare(self, model: SentenceTransformer, dtype: str = "float32") -> SentenceTransformer:
        from st_retrofit.export.runtime import load_openvino

        return load_openvino(model, openvino_file(model, self.int8))


@register_encoder_backend
class OpenVinoInt8Backend(OpenVinoBackend):
    name = "openvino-int8"
    description = "the OpenVINO model with int8 weights (nncf weight compression; activations in fp32)"
    modules = ("onnx", "openvino", "nncf")
    int8 = True


def export_cache_folder(model: SentenceTransformer) -> Path:
    """Where the graphs of ``model`` are kept: one folder per model fingerprint, in the sentence-transformers layout
    (``onnx/``, ``openvino/``)."""
    from st_retrofit.files import cache_dir
    from st_retrofit.models.fingerprint import model_fingerprint

    return cache_dir() / "onnx" / model_fingerprint(model)[:20]


def exported_file(model: SentenceTransformer, int8: bool) -> Path:
    """The cached ONNX file of ``model`` (exported, and quantized with ``int8``, on first use)."""
    import logging

    from st_retrofit.export.onnx import INT8_FILE, ONNX_FILE, export_onnx, quantize_int8

    folder = export_cache_folder(model)
    fp32, quantized = folder / ONNX_FILE, folder / INT8_FILE
    if not fp32.is_file():
        logging.getLogger(__name__).info("Exporting the teacher to ONNX (once) into %s", folder)
        export_onnx(model, fp32)
    if int8 and not quantized.is_file():
        quantize_int8(fp32, quantized)
    return quantized if int8 else fp32


def openvino_file(model: SentenceTransformer, int8: bool) -> Path:
    """The cached OpenVINO IR of ``model`` (converted from its ONNX graph, and its weights compressed with ``int8``,
    on first use)."""
    from st_retrofit.export.openvino import OPENVINO_FILE, OPENVINO_INT8_FILE, compress_int8_weights, convert_openvino

    folder = export_cache_folder(model)
    fp32, compressed = folder / OPENVINO_FILE, folder / OPENVINO_INT8_FILE
    if not fp32.is_file():
        convert_openvino(exported_file(model, int8=False), fp32)
    if int8 and not compressed.is_file():
        compress_int8_weights(fp32, compressed)
    return compressed if int8 else fp32
