"""A content-addressed, memory-mapped fp16 embedding cache.

Encoding is nearly all of a mining run's time, so every embedding is kept and found again by what produced it:

- **namespace** = teacher fingerprint (a hash of its weights, module configs and tokenizer, never its path) + role
  (query or document, which Router models encode differently) + prompt + max sequence length + backend (the
  runtime and precision that computed the vectors: ``torch-float32``, ``torch-bfloat16``; the same weights run
  elsewhere give other vectors, and onnxruntime's int8 even differs by batch size);
- **key** = a 128-bit BLAKE2b hash of the text.

A namespace folder holds append-only shards: ``<name>.npy`` (fp16 rows) and ``<name>.keys.npy`` (their keys). The
keys file is written last and atomically, so a shard exists only once it is complete; a run killed while encoding
loses at most the shard it was writing. Runs over other datasets that share texts, or a rerun after changing only
the filters, encode nothing they have seen before. ``sentence_transformers.util.mine_hard_negatives`` keeps one
``.npy`` per exact list of texts, keyed on the model's Hub id (empty for a local path), so it can neither reuse a
subset nor tell two local models apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm.auto import tqdm

from st_retrofit.models.fingerprint import model_fingerprint
from st_retrofit.models.resolve import role_prompt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

from st_retrofit.files import atomic_path

logger = logging.getLogger(__name__)

KEY_DTYPE = np.dtype("S16")
BATCHES_PER_CALL = 16  # batches handed to one encode() call
Role = Literal["query", "document"]


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """128-bit BLAKE2b keys of ``texts`` (UTF-8), as an ``S16`` array."""
    return np.array([hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts], dtype=KEY_DTYPE)


def encoder_backend(model: SentenceTransformer) -> str:
    """What computes ``model``'s vectors, for the cache namespace: the first module's ``encoder_backend`` where it has one
    (:class:`~st_retrofit.export.runtime.OnnxEncoder`: ``onnx-model``, ``onnx-model_qint8``), else
    ``torch-<dtype>`` of the model's parameters."""
    # Not ``backend``: sentence-transformers' Transformer module has that attribute ("torch") whatever the dtype.
    named = getattr(model[0], "encoder_backend", None) if len(model) else None
    if isinstance(named, str):
        return named
    parameter = next(iter(model.parameters()), None)
    return f"torch-{str(parameter.dtype).removeprefix('torch.') if parameter is not None else 'float32'}"


class EmbeddingTable:
    """Rows of the cache in a chosen order, read lazily in blocks (the whole table need never be in memory).

    Args:
        folder: the namespace folder.
        shard_names: shard file stems, indexed by ``shards``.
        shards: shard index of each row.
        rows: row within its shard of each row.
        dim: embedding dimension.
    """

    def __init__(self, folder: Path, shard_names: list[str], shards: np.ndarray, rows: np.ndarray, dim: int) -> None:
        self.folder, self.shard_names, self.dim = folder, shard_names, dim
        self.shards, self.rows = shards.astype(np.int32), rows.astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: np.ndarray) -> EmbeddingTable:
        return EmbeddingTable(self.folder, self.shard_names, self.shards[indices], self.rows[indices], self.dim)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a fp16 ``[n, dim]`` array."""
        return self.take(np.arange(start, len(self) if stop is None else min(stop, len(self))))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The given rows as a fp16 ``[n, dim]`` array."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.dim), dtype=np.float16)
        shards, rows = self.shards[indices], self.rows[indices]
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            # A map per read, dropped at once: resident pages never outgrow one block.
            data = np.load(self.folder / f"{self.shard_names[shard]}.npy", mmap_mode="r")
            out[where] = data[rows[where]]
            del data
        return out

    def blocks(self, block_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), block_size):
            yield start, self.read(start, start + block_size)


Index = tuple[list[str], np.ndarray, np.ndarray, np.ndarray]


def read_index(folder: Path) -> Index:
    """A namespace's committed shards: their names, and every key (sorted) with its shard index and row."""
    names = sorted(p.name[: -len(".keys.npy")] for p in folder.glob("*.keys.npy"))
    keys, shard_ids, rows = [], [], []
    for i, name in enumerate(names):
        k = np.load(folder / f"{name}.keys.npy")
        keys.append(k)
        shard_ids.append(np.full(len(k), i, dtype=np.int32))
        rows.append(np.arange(len(k), dtype=np.int64))
    if not keys:
        empty = np.empty(0, dtype=np.int64)
        return names, np.empty(0, dtype=KEY_DTYPE), empty.astype(np.int32), empty
    keys_all, shard_all, rows_all = np.concatenate(keys), np.concatenate(shard_ids), np.concatenate(rows)
    order = np.argsort(keys_all, kind="stable")
    return names, keys_all[order], shard_all[order], rows_all[order]


def lookup_keys(index: Index, keys: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Shard names, and for each key: found, shard index, row."""
    names, sorted_keys, shards, rows = index
    if not len(sorted_keys):
        zeros = np.zeros(len(keys), dtype=np.int64)
        return names, zeros.astype(bool), zeros.astype(np.int32), zeros
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return names, sorted_keys[pos] == keys, shards[pos], rows[pos]


class TeacherEmbeddings:
    """The embeddings a mining run's teacher computed, found again by text: what
    :class:`~st_retrofit.losses.TeacherEmbeddingLoss` distils, with no teacher forward pass during training.

    Args:
        query_folder: the cache namespace of the teacher's query embeddings (the mining report's
            ``cache.query_namespace``).
        document_folder: the namespace of its document embeddings (``cache.document_namespace``).

    The key index of each namespace is read once; rows are read from the memory-mapped shards per call.
    """

    def __init__(self, query_folder: str | Path, document_folder: str | Path) -> None:
        self.folders = {"query": Path(query_folder), "document": Path(document_folder)}
        self._indexes: dict[str, Index] = {}
        self.dim: int | None = None
        for role, folder in self.folders.items():
            meta = folder / "meta.json"
            if not meta.is_file():
                raise FileNotFoundError(
                    f"{folder}: the mining cache's {role} embeddings are gone; run the mine stage again "
                    "(st-retrofit mine --force) to encode them"
                )
            self.dim = int(json.loads(meta.read_text())["dim"])

    @classmethod
    def from_mining_report(cls, report: dict) -> TeacherEmbeddings:
        cache = report.get("cache") or {}
        if "query_namespace" not in cache:
            raise ValueError("the mining report names no cache namespaces; run the mine stage again")
        return cls(cache["query_namespace"], cache["document_namespace"])

    def __getstate__(self) -> dict:  # dataloader workers read their own index
        return {**self.__dict__, "_indexes": {}}

    def lookup(self, texts: Sequence[str], role: Role) -> np.ndarray:
        """The teacher's fp16 ``[len(texts), dim]`` embeddings of ``texts`` (as queries or as documents).

        Raises:
            KeyError: a text the teacher never encoded in this role (data that did not go through mining).
        """
        if role not in self._indexes:
            self._indexes[role] = read_index(self.folders[role])
        keys = text_keys(texts)
        names, found, shards, rows = lookup_keys(self._indexes[role], keys)
        if not found.all():
            missing = texts[int(np.flatnonzero(~found)[0])]
            raise KeyError(
                f"{int((~found).sum())} of {len(texts)} texts have no teacher {role} embedding in "
                f"{self.folders[role]} (first: {missing[:60]!r}); only mined data can be distilled"
            )
        return EmbeddingTable(self.folders[role], names, shards, rows, self.dim).read()


class EmbeddingCache:
    """Encode texts with a model, reusing every embedding computed before under the same namespace.

    Args:
        root: the cache root; namespaces are sub-folders.
        model: the encoder.
        role: ``query`` or ``document``; chooses ``encode_query`` or ``encode_document`` and the default prompt.
        prompt: the prompt string; ``None`` takes the model's own prompt for the role.
        fingerprint: the model's :func:`model_fingerprint`, when the caller already has it.
        backend: what computes the vectors, part of the namespace; ``None`` = :func:`encoder_backend` of ``model``.
        shard_size: texts per shard; a killed (or Ctrl-C'd) run re-encodes at most this many. A 300M teacher on
            two CPU cores encodes ~10 texts a second, so the default loses at most a few minutes.

    Example:
        ::

            cache = EmbeddingCache("~/.cache/st-retrofit/embeddings", teacher, role="document")
            table = cache.encode(corpus_texts, batch_size=64)  # only texts never seen before are encoded
            first_block = table.read(0, 4096)  # fp16 [4096, dim], normalized
    """

    def __init__(
        self,
        root: str | Path,
        model: SentenceTransformer,
        role: Role,
        prompt: str | None = None,
        fingerprint: str | None = None,
        backend: str | None = None,
        shard_size: int = 2048,
    ) -> None:
        self.model, self.role, self.shard_size = model, role, shard_size
        self.prompt = role_prompt(model, role) if prompt is None else prompt
        self.fingerprint = fingerprint or model_fingerprint(model)
        self.backend = backend or encoder_backend(model)
        self.max_seq_length = getattr(model, "max_seq_length", None)
        prompt_hash = hashlib.blake2b(self.prompt.encode(), digest_size=4).hexdigest()
        self.folder = Path(root).expanduser() / (
            f"{self.fingerprint[:20]}-{role}-{self.max_seq_length}-{prompt_hash}-{self.backend}"
        )
        self.encoded = self.reused = 0

    # -- index of committed shards -----------------------------------------------------------------------------
    def _shards(self) -> list[str]:
        return sorted(p.name[: -len(".keys.npy")] for p in self.folder.glob("*.keys.npy"))

    def _lookup(self, keys: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Shard names, and for each key: found, shard index, row."""
        return lookup_keys(read_index(self.folder), keys)

    def _write_meta(self, dim: int) -> None:
        meta = self.folder / "meta.json"
        if not meta.exists():
            payload = {
                "model_fingerprint": self.fingerprint,
                "role": self.role,
                "prompt": self.prompt,
                "max_seq_length": self.max_seq_length,
                "backend": self.backend,
                "dim": dim,
                "dtype": "float16",
                "normalized": True,
            }
            meta.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")

    def _commit(self, embeddings: np.ndarray, keys: np.ndarray) -> None:
        name = f"{len(self._shards()):06d}-{uuid.uuid4().hex[:8]}"
        self._write_meta(embeddings.shape[1])
        # Data first, keys last: a shard without its keys file is invisible and its data file is overwritten never.
        for suffix, array in ((".npy", embeddings), (".keys.npy", keys)):
            with atomic_path(self.folder / f"{name}{suffix}") as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
                handle.flush()
                os.fsync(handle.fileno())

    # -- encoding --------------------------------------------------------------------------------------------------
    def _length_order(self, texts: list[str]) -> np.ndarray:
        """Texts ordered by token count, longest first, so each batch pads to almost nothing. ``encode`` sorts by
        character count, which in scripts with long words or many short ones misjudges the padding.

        On an accelerator the forward pass is cheap next to tokenization, and counting tokens would tokenize every
        text twice (measured on an H100: +35% encoding time with MiniLM), so there it sorts by characters too."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or self.model.device.type != "cpu":
            lengths = np.array([len(t) for t in texts])
        else:
            lengths = np.empty(len(texts), dtype=np.int64)
            for start in range(0, len(texts), 8192):
                chunk = [self.prompt + t for t in texts[start : start + 8192]]
                encoded = tokenizer(chunk, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
                lengths[start : start + len(chunk)] = [len(ids) for ids in encoded]
            if self.max_seq_length:
                lengths = np.minimum(lengths, self.max_seq_length)
        return np.lexsort((np.arange(len(texts)), -lengths))

    def _encode_batches(self, texts: list[str], batch_size: int) -> np.ndarray:
        encode = self.model.encode_query if self.role == "query" else self.model.encode_document
        return encode(
            texts,
            prompt=self.prompt,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = True) -> EmbeddingTable:
        """Make sure every text has an embedding, encoding only the missing ones, and return them in ``texts`` order.

        Duplicate texts are encoded once. Missing texts are encoded longest first in batches of ``batch_size`` and
        committed every ``shard_size`` texts; after a kill, the remaining texts form the same batches again, so a
        resumed run produces the same embeddings as an uninterrupted one.
        """
        texts = list(texts)
        keys = text_keys(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        _, found, _, _ = self._lookup(keys)
        missing_keys, first = np.unique(keys[~found], return_index=True)
        missing_texts = [texts[i] for i in np.flatnonzero(~found)[first]]
        self.reused += int(len(texts) - (~found).sum())
        if missing_texts:
            order = self._length_order(missing_texts)
            # Whole batches per shard keep the batch boundaries independent of where a previous run stopped.
            per_shard = max(batch_size, self.shard_size // batch_size * batch_size)
            step = batch_size * BATCHES_PER_CALL
            progress = tqdm(
                total=len(order),
                desc="Encoding queries" if self.role == "query" else "Encoding documents",
                unit="text",
                disable=not show_progress_bar,
            )
            for shard_start in range(0, len(order), per_shard):
                shard_order = order[shard_start : shard_start + per_shard]
                parts = []
                # Several batches per encode call: on a GPU, one call per batch costs more than the forward pass.
                for start in range(0, len(shard_order), step):
                    chunk = [missing_texts[i] for i in shard_order[start : start + step]]
                    parts.append(self._encode_batches(chunk, batch_size).astype(np.float16))
                    progress.update(len(chunk))
                self._commit(np.concatenate(parts), missing_keys[shard_order])
                self.encoded += len(shard_order)
            progress.close()
        names, found, shards, rows = self._lookup(keys)
        if not found.all():  # pragma: no cover - a shard deleted under us
            raise RuntimeError(f"embedding cache {self.folder}: {int((~found).sum())} texts vanished during the run")
        meta = self.folder / "meta.json"
        dim = int(json.loads(meta.read_text())["dim"]) if meta.exists() else self.model.get_embedding_dimension()
        return EmbeddingTable(self.folder, names, shards, rows, dim)
