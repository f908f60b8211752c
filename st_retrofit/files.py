"""Writing files so that a reader (another process, a rerun after a crash) sees the old file or the new one, never
half of one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
