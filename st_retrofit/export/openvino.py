"""OpenVINO without optimum: the exported ONNX graph converted to OpenVINO's IR, and its weights compressed to int8.

What this adds: sentence-transformers' ``backend="openvino"`` and ``export_static_quantized_openvino_model`` go
through optimum-intel, which installs beside no transformers 5 release. Here the graph of
:func:`~st_retrofit.export.onnx.export_onnx` (transformer, pooling, Dense layers, normalization) is converted with
``openvino.convert_model`` and, for int8, its weights compressed with ``nncf.compress_weights`` (int8 per output
channel, asymmetric; activations stay in fp32, so no calibration data is needed and the result is the same on every
run). The IR keeps both of the ONNX graph's outputs.

Files go where sentence-transformers' openvino backend looks for them (``openvino/openvino_model.xml`` with its
``.bin``), so a user with a working optimum-intel loads the folder with
``SentenceTransformer(folder, backend="openvino")``, or the int8 file with
``model_kwargs={"file_name": "openvino/openvino_model_int8_weights.xml"}``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

OPENVINO_FILE = "openvino/openvino_model.xml"
OPENVINO_INT8_FILE = "openvino/openvino_model_int8_weights.xml"


def convert_openvino(source: str | Path, path: str | Path) -> Path:
    """The ONNX graph ``source`` as OpenVINO IR at ``path`` (``.xml``, with its ``.bin`` beside it), weights kept
    in fp32 (OpenVINO's default would halve them to fp16)."""
    from st_retrofit.extras import require_module

    ov = require_module("openvino", "OpenVINO conversion")
    return _save_ir(lambda: ov.convert_model(str(source)), path, ov)


def compress_int8_weights(source: str | Path, path: str | Path) -> Path:
    """The IR ``source`` with its weights compressed to int8 by nncf (per output channel, asymmetric), at ``path``.
    Activations stay fp32: the embeddings move by cosine ~1e-4, the files shrink about 4x."""
    from st_retrofit.extras import require_module

    ov = require_module("openvino", "OpenVINO int8")
    nncf = require_module("nncf", "OpenVINO int8")

    def compressed():
        return nncf.compress_weights(ov.Core().read_model(str(source)), mode=nncf.CompressWeightsMode.INT8_ASYM)

    return _save_ir(compressed, path, ov)


def _save_ir(build, path: str | Path, ov) -> Path:
    """Save the model ``build()`` returns as ``path`` and its ``.bin``: both written in a folder beside and moved
    into place, the ``.xml`` last, so an interrupted conversion leaves no ``.xml`` (the file readers look for)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.stem}.partial-", dir=path.parent))
    try:
        ov.save_model(build(), str(work / path.name), compress_to_fp16=False)
        os.replace(work / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(work / path.name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
