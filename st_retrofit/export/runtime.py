"""Run an exported ONNX graph as a :class:`~sentence_transformers.SentenceTransformer`, through onnxruntime alone.

What this adds: sentence-transformers' ``backend="onnx"`` needs optimum; :func:`load_onnx` gives the same object
(``encode``, ``encode_query``/``encode_document`` with the model's prompts, ``max_seq_length``, mteb's wrapper)
with the graph of :func:`~st_retrofit.export.onnx.export_onnx` in place of torch: the miner's and the evaluator's
``backend`` (``onnx``, ``onnx-int8``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentence_transformers.base.modules.input_module import InputModule

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class OnnxEncoder(InputModule):
    """The first and only module of an ONNX-backed model: the torch model's own tokenizer and prompts in front,
    one onnxruntime session for everything after.

    Args:
        input_module: the torch model's first module (its ``preprocess`` and tokenizer are reused; its weights are
            not run, and it is kept out of this module's parameters).
        file: the ``.onnx`` file.
        fingerprint: what identifies the model the graph was exported from (its
            :func:`~st_retrofit.mining.cache.model_fingerprint`); with the file's name it identifies the vectors.
        threads: onnxruntime's intra-op threads (``None``: its default, every core).
    """

    def __init__(self, input_module: Any, file: str | Path, fingerprint: str, threads: int | None = None) -> None:
        super().__init__()
        from st_retrofit.extras import require_module

        ort = require_module("onnxruntime", "the onnx backend")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.file, self.fingerprint = Path(file), fingerprint
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.dimension = int(self.session.get_outputs()[1].shape[-1])
        object.__setattr__(self, "_input_module", input_module)  # not a submodule: no torch weights here

    @property
    def encoder_backend(self) -> str:
        """The backend's name in cache namespaces: ``onnx-model`` or ``onnx-model_qint8`` (int8 vectors differ)."""
        return f"onnx-{self.file.stem}"

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
        (embeddings,) = self.session.run(["sentence_embedding"], feeds)
        features["sentence_embedding"] = torch.from_numpy(embeddings)
        return features

    def get_embedding_dimension(self) -> int:
        return self.dimension

    get_sentence_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "file": self.file.name}

    def save(self, output_path: str, *args, **kwargs) -> None:
        raise NotImplementedError(
            "an ONNX-backed model is for encoding; save the torch model (st-retrofit export writes both)"
        )


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
    from sentence_transformers import SentenceTransformer

    from st_retrofit.models.fingerprint import model_fingerprint

    encoder = OnnxEncoder(model[0], file, model_fingerprint(model), threads)
    onnx_model = SentenceTransformer(
        modules=[encoder], device="cpu", prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name,
        similarity_fn_name=model.similarity_fn_name,
    )  # fmt: skip
    return onnx_model
