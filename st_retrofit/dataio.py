"""Reading data wherever a recipe points: local files (jsonl, json, parquet, csv, tsv) and folders saved by
``datasets`` or Hub datasets, checked before anything is loaded; and content hashes of local inputs, which stage
fingerprints are made of.

A low module: the synth stage (its corpus), the data stage (its sources) and the pipeline (its fingerprints) read
through it, so none of them imports another's core.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from st_retrofit.config import ConfigError
from st_retrofit.files import atomic_write_text, cache_dir

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def is_local(path: str) -> bool:
    """Whether ``path`` names a local file or folder rather than a Hub dataset (which looks like ``org/name``): it
    exists, starts like a path (``./``, ``/``, ``~``) or ends like a data file (``.jsonl``...). A missing local
    path is an error, never a Hub lookup."""
    return (
        path.startswith((".", "/", "~"))
        or Path(path).suffix.lower() in FILE_FORMATS
        or Path(path).expanduser().exists()
    )


def read_dataset(
    source: str | Path, split: str = "train", config_name: str | None = None, revision: str | None = None
):
    """A ``Dataset`` from a file (by suffix), a folder saved by ``datasets``, a data folder, or a Hub dataset.

    Raises:
        ConfigError: ``path`` (missing, unknown type, unreadable) or ``split`` (not in the folder).
    """
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        fmt = FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError("path", f"{path}: unknown file type {path.suffix!r}; use {', '.join(FILE_FORMATS)}")
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        if path.stat().st_size == 0:
            raise ConfigError("path", f"{path} is empty")
        try:
            return datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
        except Exception as exc:  # datasets wraps parser errors in several types; find the line ourselves
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problem = file_problem(path) or f"{path}: cannot read it as {fmt} ({first})"
            raise ConfigError("path", problem) from None
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise ConfigError("split", f"{path} has the splits {list(data)}, not {split!r}")
                data = data[split]
            return data
        return datasets.load_dataset(str(path), config_name, split=split)
    if is_local(str(source)):
        raise ConfigError("path", f"{source} does not exist")
    check_hub_dataset(str(source), reading=True)
    try:
        return datasets.load_dataset(str(source), config_name, split=split, revision=revision)
    except Exception as exc:  # the Hub client raises many types; all mean "cannot read this name"
        raise ConfigError(
            "path", f"cannot load {source!r} as a file, a folder or a Hub dataset ({type(exc).__name__}: {exc})"
        ) from None


def check_hub_dataset(name: str, reading: bool = False) -> None:
    """A Hub dataset id before it is read: an error when the Hub has no such dataset. When the Hub cannot be reached
    (5 s), validation warns once (the dataset may be cached) and reading stops with one line naming the fix, instead
    of the Hub client's half minute of retries. Nothing is checked under ``HF_HUB_OFFLINE=1``, where datasets reads
    its cache only.

    Raises:
        ConfigError: ``path``.
    """
    if "1" in (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE")):
        return
    from st_retrofit.models.resolve import hub_repo_exists

    exists = hub_repo_exists(name, "dataset", warn=not reading)
    if exists is False:
        raise ConfigError("path", f"the Hub has no dataset {name!r}, and no such file or folder exists")
    if exists is None and reading:
        raise ConfigError(
            "path",
            f"cannot reach the Hub to read the dataset {name!r}; if it is in the datasets cache set HF_HUB_OFFLINE=1, "
            "else give a local file or folder",
        )


def file_problem(path: Path, limit_bytes: int | None = None) -> str | None:
    """What makes a data file unreadable, in words with its line number: empty, not UTF-8, or (jsonl) a line that
    is not a JSON object. ``None`` for a readable file. Reads the file line by line, at most ``limit_bytes``."""
    import json

    jsonl = path.suffix.lower() == ".jsonl"
    content, read = False, 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            read += len(raw)
            if limit_bytes is not None and read > limit_bytes:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{path}, line {number}: not UTF-8 text (byte {exc.start + 1}); save the file as UTF-8"
            if not line.strip():
                continue
            content = True
            if jsonl:
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    return f"{path}, line {number}: not valid JSON ({getattr(exc, 'msg', exc)} at column {getattr(exc, 'pos', 0) + 1})"
                if not isinstance(row, dict):
                    return f"{path}, line {number}: expected a JSON object per line, got {type(row).__name__}"
    return None if content else f"{path} is empty"


def local_columns(source: str | Path, split: str = "train") -> list[str] | None:
    """The column names of a local file or saved dataset, read from its header alone (first jsonl line, csv
    header, parquet schema, ``dataset_info.json``), so that a recipe is checked before any data is loaded.
    ``None`` when that cannot be told cheaply (a Hub dataset, a data folder, a json array)."""
    import csv
    import json

    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".csv", ".tsv", ".json"):
            problem = file_problem(path, limit_bytes=64 << 20)  # a recipe check reads the head of a large file
            if problem:
                raise ConfigError("path", problem)
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                first = next((line for line in handle if line.strip()), "")
            try:
                row = json.loads(first)
            except ValueError:
                return None
            return list(row) if isinstance(row, dict) else None
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as handle:
                return next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), None)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return None
    info = path / split / "dataset_info.json" if (path / "dataset_dict.json").exists() else path / "dataset_info.json"
    if info.is_file():
        features = json.loads(info.read_text()).get("features")
        return list(features) if isinstance(features, dict) else None
    return None


def content_hash(paths: list[str | Path]) -> str:
    """A SHA-256 over the bytes of the given files (folders: every file in them, in path order); missing paths
    count by name. Stages fingerprint their local input files with it, so an edited corpus reruns them."""
    digest = hashlib.sha256()
    for entry in paths:
        path = Path(entry).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            if not file.is_file():
                digest.update(b"<missing>")
                continue
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def cached_content_hash(path: str | Path) -> str:
    """:func:`content_hash` of one file or folder, remembered in ``$ST_RETROFIT_CACHE/content-hashes.json`` under
    its path, sizes and modification times, so that a large corpus is read once, not at every run."""
    import json

    path = Path(path).expanduser().resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    signature = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    key = hashlib.sha256(json.dumps(signature).encode()).hexdigest()
    store = cache_dir() / "content-hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = content_hash([path])
        store.parent.mkdir(parents=True, exist_ok=True)
        # Concurrent runs may each write; the last complete file wins, and every entry is a fact either way.
        atomic_write_text(store, json.dumps(known))
    return known[key]
