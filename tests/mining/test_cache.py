from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from st_retrofit.mining import EmbeddingCache, model_fingerprint

TEXTS = [f"document number {i} about {'rivers' if i % 2 else 'mountains'} and {i * 7} towns" for i in range(40)]


def _fresh(model, texts, prompt=""):
    return model.encode_document(texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True)


def test_cached_embeddings_are_the_models_in_text_order_as_fp16(tiny_model, tmp_path):
    table = EmbeddingCache(tmp_path, tiny_model, "document").encode(TEXTS, batch_size=8, show_progress_bar=False)
    block = table.read(0, len(TEXTS))
    assert block.dtype == np.float16 and block.shape == (40, tiny_model.get_embedding_dimension())
    np.testing.assert_allclose(block.astype(np.float32), _fresh(tiny_model, TEXTS), atol=2e-3)


def test_a_second_dataset_sharing_texts_encodes_only_the_new_ones(tiny_model, tmp_path):
    EmbeddingCache(tmp_path, tiny_model, "document").encode(TEXTS[:30], show_progress_bar=False)
    second = EmbeddingCache(tmp_path, tiny_model, "document")
    table = second.encode(TEXTS[20:] + TEXTS[20:25], show_progress_bar=False)
    assert (second.encoded, second.reused) == (10, 15)
    np.testing.assert_allclose(table.read(0, 20).astype(np.float32), _fresh(tiny_model, TEXTS[20:]), atol=2e-3)


def test_the_same_weights_loaded_from_another_folder_share_the_cache(tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    tiny_model.save_pretrained(str(tmp_path / "copy"))
    copy = SentenceTransformer(str(tmp_path / "copy"), device="cpu")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model)
    EmbeddingCache(tmp_path / "cache", tiny_model, "document").encode(TEXTS, show_progress_bar=False)
    again = EmbeddingCache(tmp_path / "cache", copy, "document")
    again.encode(TEXTS, show_progress_bar=False)
    assert again.encoded == 0


def test_a_different_model_never_reuses_the_cache(tiny_model, tmp_path):
    EmbeddingCache(tmp_path, tiny_model, "document").encode(TEXTS, show_progress_bar=False)
    with torch.no_grad():
        next(tiny_model.parameters())[0, 0] += 1e-3  # one weight changed: a different model
    changed = EmbeddingCache(tmp_path, tiny_model, "document")
    changed.encode(TEXTS, show_progress_bar=False)
    assert changed.encoded == len(TEXTS)


@pytest.mark.parametrize("change", ["prompt", "role", "max_seq_length"])
def test_prompt_role_and_max_length_each_get_their_own_namespace(tiny_model, tmp_path, change):
    base = EmbeddingCache(tmp_path, tiny_model, "document")
    base.encode(TEXTS, show_progress_bar=False)
    if change == "max_seq_length":
        tiny_model.max_seq_length = 8
    other = EmbeddingCache(
        tmp_path, tiny_model, "query" if change == "role" else "document", "search: " if change == "prompt" else None
    )
    other.encode(TEXTS, show_progress_bar=False)
    assert other.folder != base.folder and other.encoded == len(TEXTS)


def test_an_encoding_run_killed_midway_keeps_finished_shards_and_resumes_to_the_same_embeddings(
    tiny_model, tmp_path, monkeypatch
):
    uninterrupted = EmbeddingCache(tmp_path / "a", tiny_model, "document", shard_size=8)
    expected = uninterrupted.encode(TEXTS, batch_size=4, show_progress_bar=False).read()

    cache = EmbeddingCache(tmp_path / "b", tiny_model, "document", shard_size=8)
    real, calls = cache._encode_batches, []

    def dies_in_the_fourth_call(texts, batch_size):
        calls.append(len(texts))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(texts, batch_size)

    monkeypatch.setattr(cache, "_encode_batches", dies_in_the_fourth_call)
    with pytest.raises(KeyboardInterrupt):
        cache.encode(TEXTS, batch_size=4, show_progress_bar=False)
    assert len(list(cache.folder.glob("*.keys.npy"))) == 3  # 3 shards of 8 texts were committed

    resumed = EmbeddingCache(tmp_path / "b", tiny_model, "document", shard_size=8)
    table = resumed.encode(TEXTS, batch_size=4, show_progress_bar=False)
    assert (resumed.encoded, resumed.reused) == (16, 24)
    np.testing.assert_array_equal(table.read(), expected)


def test_the_backend_is_part_of_the_namespace(tiny_model, tmp_path):
    """The same weights run in another precision (or, later, another runtime) give other vectors: never mixed."""
    import copy

    from st_retrofit.mining.cache import encoder_backend

    fp32 = EmbeddingCache(tmp_path, tiny_model, "document")
    fp32.encode(TEXTS, show_progress_bar=False)
    assert fp32.backend == encoder_backend(tiny_model) == "torch-float32"
    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    bf16 = EmbeddingCache(tmp_path, half, "document", fingerprint=fp32.fingerprint)  # even with the same fingerprint
    bf16.encode(TEXTS, show_progress_bar=False)
    assert bf16.backend == "torch-bfloat16" and bf16.folder != fp32.folder and bf16.encoded == len(TEXTS)
    named = EmbeddingCache(tmp_path, tiny_model, "document", backend="onnx-int8")
    assert named.folder.name.endswith("-onnx-int8")
    assert json.loads((bf16.folder / "meta.json").read_text())["backend"] == "torch-bfloat16"
