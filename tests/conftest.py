"""Shared fixtures: a tiny multilingual BERT built locally, and isolation from the user's Hub login and caches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """No Hub token and no access to the user's caches; a shared st-retrofit cache for the test session."""
    hf_home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("ST_RETROFIT_CACHE", str(tmp_path_factory.getbasetemp() / "st_retrofit_cache"))


def build_tiny_model(folder: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece vocabulary trained on the demo corpus, saved as an ST folder;
    ``hidden_size`` and ``seed`` make another model on the same vocabulary (a wider teacher)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from st_retrofit.synth import build_demo_dataset

    data = build_demo_dataset(train_entities=30, eval_entities=10, queries_per_document=6, seed=0)
    texts = [t for split in data.values() for t in list(split["query"]) + list(split["document"])]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # The vocabulary is built here, not by tokenizers' WordPieceTrainer, whose tie-breaking follows Rust hash order
    # and gave a different tiny model in every process: every word of the corpus, then every character alone and
    # as a continuation piece, so that unseen words still tokenize.
    counts = Counter(w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    characters = sorted({c for word in counts for c in word})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(counts, key=lambda w: (-counts[w], w))
    pieces = list(dict.fromkeys(specials + characters + [f"##{c}" for c in characters] + words))
    tokenizer = Tokenizer(models.WordPiece(vocab={p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    hf_dir = folder / "hf"
    BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=128).save_pretrained(hf_dir)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")], device="cpu"
    )
    model.save_pretrained(str(folder / "model"))
    return folder / "model"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def wide_teacher_path(tmp_path_factory) -> Path:
    """Another tiny BERT on the same vocabulary, 48 dimensions wide: a teacher wider than the tiny student."""
    return build_tiny_model(tmp_path_factory.mktemp("wide_teacher"), hidden_size=48, seed=1)


@pytest.fixture
def tiny_model(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_path), device="cpu")


@pytest.fixture
def tiny_recipe_data(tiny_model_path, tmp_path) -> dict:
    """A recipe mapping that runs every stage on the tiny model in seconds."""
    return {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_model_path), "max_seq_length": 48, "lora": {"r": 4, "alpha": 8,
                  "target_modules": ["query", "value"]}},
        "synth": {"languages": ["en", "ru", "ja"], "train_entities": 12, "eval_entities": 6},
        "mining": {"teacher": str(tiny_model_path), "num_negatives": 2, "relative_margin": None, "batch_size": 16},
        "train": {"args": {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1,
                           "save_steps": 2, "disable_tqdm": True}},
        "eval": {"k": 5, "batch_size": 16},
        "publish": {"repo_id": "test-org/tiny-retrofit", "dry_run": True},
    }  # fmt: skip


@pytest.fixture
def counting_stages(monkeypatch):
    """Replace the real stages by ones that only count their runs, keeping names, sections and dependencies."""
    from st_retrofit import pipeline
    from st_retrofit.pipeline import STAGES, Stage

    calls: list[str] = []

    def make(name):
        def run(recipe, run_dir, output_dir):
            calls.append(name)
            marker = output_dir / "out.txt"
            marker.write_text(f"{name} ran\n")
            return marker

        return run

    fake = {n: Stage(n, s.sections, s.needs, make(n), s.uses) for n, s in STAGES.items()}
    monkeypatch.setattr(pipeline, "STAGES", fake)
    return calls
