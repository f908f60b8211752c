"""ONNX, OpenVINO and int8 without optimum: export a SentenceTransformer, quantize it, and encode with onnxruntime
or OpenVINO.

- :func:`export_onnx` / :func:`quantize_int8`: one ``.onnx`` file (``onnx/model.onnx``, ``onnx/model_qint8.onnx``);
- :func:`convert_openvino` / :func:`compress_int8_weights`: that graph as OpenVINO IR
  (``openvino/openvino_model.xml``, ``openvino/openvino_model_int8_weights.xml``);
- :func:`load_onnx` / :func:`load_openvino`: a SentenceTransformer that encodes with such a file (the miner's and
  evaluator's ``onnx``, ``onnx-int8``, ``openvino`` and ``openvino-int8`` backends, :data:`ENCODER_BACKENDS`);
- :func:`export_model_folder`: ``st-retrofit export MODEL OUT [--int8] [--openvino]``;
- :func:`cosine_agreement`: how close the exported embeddings are to the torch model's.

Imports are lazy: recipes read :data:`ENCODER_BACKENDS` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.export.agreement import SAMPLE_TEXTS, cosine_agreement
    from st_retrofit.export.backends import ENCODER_BACKENDS, EncoderBackend, register_encoder_backend
    from st_retrofit.export.onnx import (
        INT8_FILE,
        ONNX_FILE,
        ExportError,
        check_exportable,
        export_model_folder,
        export_onnx,
        quantize_int8,
    )
    from st_retrofit.export.openvino import (
        OPENVINO_FILE,
        OPENVINO_INT8_FILE,
        compress_int8_weights,
        convert_openvino,
    )
    from st_retrofit.export.runtime import GraphEncoder, OnnxEncoder, OpenVinoEncoder, load_onnx, load_openvino

_EXPORTS = {
    "SAMPLE_TEXTS": "st_retrofit.export.agreement",
    "cosine_agreement": "st_retrofit.export.agreement",
    "ENCODER_BACKENDS": "st_retrofit.export.backends",
    "EncoderBackend": "st_retrofit.export.backends",
    "register_encoder_backend": "st_retrofit.export.backends",
    "INT8_FILE": "st_retrofit.export.onnx",
    "ONNX_FILE": "st_retrofit.export.onnx",
    "ExportError": "st_retrofit.export.onnx",
    "check_exportable": "st_retrofit.export.onnx",
    "export_model_folder": "st_retrofit.export.onnx",
    "export_onnx": "st_retrofit.export.onnx",
    "quantize_int8": "st_retrofit.export.onnx",
    "OPENVINO_FILE": "st_retrofit.export.openvino",
    "OPENVINO_INT8_FILE": "st_retrofit.export.openvino",
    "compress_int8_weights": "st_retrofit.export.openvino",
    "convert_openvino": "st_retrofit.export.openvino",
    "GraphEncoder": "st_retrofit.export.runtime",
    "OnnxEncoder": "st_retrofit.export.runtime",
    "OpenVinoEncoder": "st_retrofit.export.runtime",
    "load_onnx": "st_retrofit.export.runtime",
    "load_openvino": "st_retrofit.export.runtime",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
