"""Run an exported graph as a :class:`~sentence_transformers.SentenceTransformer`, through onnxruntime or OpenVINO
alone.

What this adds: sentence-transformers' ``backend="onnx"`` and ``backend="openvino"`` need optimum; :func:`load_onnx`
and :func:`load_openvino` give the same object (``encode``, ``encode_query``/``encode_document`` with the model's
prompts, ``max_seq_length``, mteb's wrapper) with the graph of :func:`~st_retrofit.export.onnx.export_onnx` (or its
OpenVINO conversion) in place of torch: the miner's and the evaluator's ``backend`` (``onnx``, ``onnx-int8``,
``openvino``, ``openvino-int8``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentence_transformers.base.modules.input_module import InputModule

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer


class GraphEncoder(InputModule):
    """The first and only module of a graph-backed model: the torch model's own tokenizer and prompts in front, one
    compiled graph (whose second output is ``sentence_embedding``) for everything after. Subclasses open the graph
    (setting ``input_names`` and ``dimension``) and implement :meth:`run`.

    Args:
        input_module: the torch model's first module (its ``preprocess`` and tokenizer are reused; its weights are
            not run, and it is kept out of this module's parameters).
        file: the graph's file (``.onnx``, or OpenVINO's ``.xml``).
        fingerprint: what identifies the model the graph was exported from (its
            :func:`~st_retrofit.mining.cache.model_fingerprint`); with the file's name it identifies the vectors.
    """

    runtime = ""  # the cache namespace's prefix: vectors of two runtimes (or two files) are never mixed

    def __init__(self, input_module: Any, file: str | Path, fingerprint: str) -> None:
        super().__init__()
        self.file, self.fingerprint = Path(file), fingerprint
        self.input_names: list[str] = []
        self.dimension = 0
        object.__setattr__(self, "_input_module", input_module)  # not a submodule: no torch weights here

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's ``sentence_embedding`` for ``feeds`` (the tokenizer's arrays, by input name)."""
        raise NotImplementedError

    @property
    def encoder_backend(self) -> str:
        """The backend's name in cache namespaces: ``onnx-model``, ``onnx-model_qint8``, ``openvino-openvino_model``
        ... (int8 vectors differ from fp32's)."""
        return f"{self.runtime}-{self.file.stem}"

    @property
    def tokenizer(self) -> Any:
        return self._input_module.tokenizer

    @property
    def max_seq_length(self) -> int | None:
        return self._input_module.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self._input_module.max_seq_length = value

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        return self._input_module.preprocess(inputs, prompt=prompt, **kwargs)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        import torch

        feeds = {name: features[name].cpu().numpy() for name in self.input_names}
        features["sentence_embedding"] = torch.from_numpy(self.run(feeds))
        return features

    def get_embedding_dimension(self) -> int:
        return self.dimension

    get_sentence_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "file": self.file.name}

    def save(self, output_path: str, *args, **kwargs) -> None:
        raise NotImplementedError(
            f"a {self.runtime}-backed model is for encoding; save the torch model (st-retrofit export writes both)"
        )


class OnnxEncoder(GraphEncoder):
    """A :class:`GraphEncoder` on one onnxruntime session.

    Args:
        input_module, file, fingerprint: as :class:`GraphEncoder` (``file``: the ``.onnx`` file).
        threads: onnxruntime's intra-op threads (``None``: its default, every core).
    """

    runtime = "onnx"

    def __init__(self, input_module: Any, file: str | Path, fingerprint: str, threads: int | None = None) -> None:
        super().__init__(input_module, file, fingerprint)
        from st_retrofit.extras import require_module

        ort = require_module("onnxruntime", "the onnx backend")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.dimension = int(self.session.get_outputs()[1].shape[-1])

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["sentence_embedding"], feeds)[0]


class OpenVinoEncoder(GraphEncoder):
    """A :class:`GraphEncoder` on one OpenVINO model compiled for the CPU.

    Args:
        input_module, file, fingerprint: as :class:`GraphEncoder` (``file``: the IR's ``.xml``, its ``.bin`` beside).
        threads: OpenVINO's inference threads (``None``: its default, every core).
    """

    runtime = "openvino"

    def __init__(self, input_module: Any, file: str | Path, fingerprint: str, threads: int | None = None) -> None:
        super().__init__(input_module, file, fingerprint)
        from st_retrofit.extras import require_module

        ov = require_module("openvino", "the openvino backend")
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        # f32 inference precision: on CPUs with AMX OpenVINO would otherwise compute in bf16.
        config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = ov.Core().compile_model(str(file), "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output = self.compiled.output("sentence_embedding")
        self.dimension = int(self.output.get_partial_shape()[-1].get_length())

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import numpy as np

        return np.asarray(self.compiled(feeds)[self.output])


def load_onnx(model: SentenceTransformer, file: str | Path, threads: int | None = None) -> SentenceTransformer:
    """``model`` with its modules replaced by the ONNX graph ``file`` exported from it; prompts, the default prompt,
    the similarity function and ``max_seq_length`` carried over.

    Example:
        ::

            teacher = load_model("offline:multilingual-e5-small")
            export_onnx(teacher, "e5/onnx/model.onnx")
            fast = load_onnx(teacher, "e5/onnx/model.onnx")
            fast.encode_query(["how do I list files"])  # onnxruntime, the model's "query: " prompt
    """
    from st_retrofit.models.fingerprint import model_fingerprint

    return _with_encoder(model, OnnxEncoder(model[0], file, model_fingerprint(model), threads))


def load_openvino(model: SentenceTransformer, file: str | Path, threads: int | None = None) -> SentenceTransformer:
    """As :func:`load_onnx`, on the OpenVINO IR ``file`` (``.xml``) converted from the model's ONNX graph
    (:func:`~st_retrofit.export.openvino.convert_openvino`)."""
    from st_retrofit.models.fingerprint import model_fingerprint

    return _with_encoder(model, OpenVinoEncoder(model[0], file, model_fingerprint(model), threads))


def _with_encoder(model: SentenceTransformer, encoder: GraphEncoder) -> SentenceTransformer:
    """A SentenceTransformer of ``encoder`` alone, with ``model``'s prompts, default prompt and similarity."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        modules=[encoder], device="cpu", prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name,
        similarity_fn_name=model.similarity_fn_name,
    )  # fmt: skip
