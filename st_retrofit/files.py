"""Writing files so that a reader (another process, a rerun after a crash) sees the old file or the new one, never
half of one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; it replaces ``target`` in one step when the block ends
    without an error, and is removed otherwise. The name carries the pid, so concurrent writers never share it."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` through :func:`atomic_path`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_dataset(data: Any, path: str | Path) -> None:
    """``data.save_to_disk(path)`` (a ``Dataset`` or ``DatasetDict``), one shard for an empty split: datasets 5.2
    saves a 0-row dataset as 0 shards and then cannot load it back (``IndexError`` in ``concat_tables``)."""
    from datasets import DatasetDict

    if isinstance(data, DatasetDict):
        empty = {name: 1 for name, split in data.items() if not len(split)}
        data.save_to_disk(str(path), num_shards=empty or None)
    else:
        data.save_to_disk(str(path), num_shards=1 if not len(data) else None)


def cache_dir() -> Path:
    """Where st-retrofit keeps rebuilt models, embedding caches and answer caches (``$ST_RETROFIT_CACHE``, default
    ``$XDG_CACHE_HOME/st-retrofit`` or ``~/.cache/st-retrofit``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "st-retrofit"
    return Path(os.environ.get("ST_RETROFIT_CACHE", default))
