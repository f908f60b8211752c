"""What runs a model that only encodes (the miner's teacher): a registry of encoder backends.

``torch`` runs the model as loaded (``teacher_dtype`` casts it); ``onnx`` and ``onnx-int8`` run the graph
:func:`~st_retrofit.export.onnx.export_onnx` traced from it, exported once into
``$ST_RETROFIT_CACHE/onnx/<model fingerprint>/`` and reused. Each backend names itself in the embedding cache's
namespace (onnxruntime's int8 vectors differ from fp32's, and with the batch they were computed in), so vectors of
two backends are never mixed.

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


def exported_file(model: SentenceTransformer, int8: bool) -> Path:
    """The cached ONNX file of ``model`` (exported, and quantized with ``int8``, on first use)."""
    import logging

    from st_retrofit.export.onnx import INT8_FILE, ONNX_FILE, export_onnx, quantize_int8
    from st_retrofit.files import cache_dir
    from st_retrofit.models.fingerprint import model_fingerprint

    folder = cache_dir() / "onnx" / model_fingerprint(model)[:20]
    fp32, quantized = folder / ONNX_FILE, folder / INT8_FILE
    if not fp32.is_file():
        logging.getLogger(__name__).info("Exporting the teacher to ONNX (once) into %s", folder)
        export_onnx(model, fp32)
    if int8 and not quantized.is_file():
        quantize_int8(fp32, quantized)
    return quantized if int8 else fp32
