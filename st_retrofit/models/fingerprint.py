"""A model's identity for caches: what decides its embeddings, hashed (never its path)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def model_fingerprint(model: SentenceTransformer) -> str:
    """A hash of everything that decides a model's embeddings: module types and settings, every weight, and the
    tokenizer. Two copies of one model in different folders share it; a fine-tuned model never does."""
    import torch

    digest = hashlib.blake2b(digest_size=20)
    for module in model:
        get_config = getattr(module, "get_config_dict", None)
        config = get_config() if callable(get_config) else {}
        digest.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    tokenizer = getattr(model, "tokenizer", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Calls set padding/truncation on the backend as they go; those are not part of what the tokenizer is.
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    elif tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    return digest.hexdigest()
