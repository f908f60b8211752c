"""The response cache: every answer an LLM gave, keyed by the hash of everything that produced it.

A SQLite file in WAL mode, committed after every answer, so a run killed at any point keeps every answer it paid
for and the next run asks only for the rest. The key covers the backend's identity (kind, model, sampling
settings), the rendered messages and the request seed; it never contains a secret. The default location is shared
by all runs (``$ST_RETROFIT_CACHE/synth``), so changing a cap or a filter reuses every answer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any


def request_key(identity: dict[str, Any], messages: list[dict[str, str]], seed: int) -> str:
    """The prompt hash: SHA-256 of the backend identity, the messages and the seed."""
    payload = json.dumps({"backend": identity, "messages": messages, "seed": seed}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Answers by prompt hash, in ``<folder>/responses.sqlite``.

    Example::

        cache = ResponseCache("~/.cache/st-retrofit/synth")
        cache.put(key, text, model="gpt-4o-mini")
        cache.get_many([key])  # {key: text}
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "responses.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, model TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
        )
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for begin in range(0, len(keys), 500):
            chunk = keys[begin : begin + 500]
            rows = self._db.execute(
                f"SELECT key, text FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update(rows.fetchall())
        return found

    def put(self, key: str, text: str, model: str = "", usage: dict[str, int] | None = None) -> None:
        usage = usage or {}
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
            (key, text, model, usage.get("prompt_tokens"), usage.get("completion_tokens"), time.time()),
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
