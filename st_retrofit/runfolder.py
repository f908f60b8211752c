"""The run folder's guarantees: one run at a time, and finished stage output is never destroyed by a later failure.

- **Lock**: a run holds an OS file lock on ``<run>/.lock`` (``filelock``, released by the kernel when the process
  dies, however it dies); a second run of the same folder stops at once, naming the holder from ``.lock.owner``.
- **Layout**: what one stage writes and another reads is named once, as an :class:`Output` (``PAIRS.at(run)``).
- **Staging**: a stage writes into ``<run>/<stage>.partial/``. Only when it completes is that folder swapped in for
  ``<run>/<stage>/`` (two renames; :func:`recover_swap` finishes or undoes a swap a crash cut short). A stage that
  fails records ``failed`` and its error in ``<stage>.partial/stage.json``; one that is interrupted records
  ``interrupted``; the next run with the same settings resumes in the partial folder, any other starts it afresh.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from st_retrofit.config import StRetrofitError
from st_retrofit.files import atomic_write_text

logger = logging.getLogger(__name__)

STATE_FILE = "stage.json"


@dataclass(frozen=True)
class Output:
    """One thing a stage writes that another reads: its place in a run folder, spelled here only.

    A stage writes it into its own folder (``<stage>.partial/`` while it runs: :meth:`inside`); the stages after
    it, the benchmarks and the CLI find it in the run folder (:meth:`at`)."""

    stage: str
    name: str

    def at(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / self.stage / self.name

    def inside(self, stage_dir: str | Path) -> Path:
        return Path(stage_dir) / self.name


PAIRS = Output("synth", "dataset")  # the train and eval pairs (DatasetDict)
UNLABELED = Output("synth", "unlabeled")  # every training-side corpus document and its opening sentence
MINED = Output("mine", "dataset")  # the mined splits, one per group
MINED_UNLABELED = Output("mine", "unlabeled")  # the unlabeled rows the teacher encoded
MINING_REPORT = Output("mine", "report.json")  # the teacher, its cache namespaces, the filters' counts
MINING_SOURCES = Output("mine", "sources.json")  # what each data source added
TRAINED_MODEL = Output("train", "model")  # the retrofitted model (merged, when the recipe merges)
EVAL_RESULTS = Output("eval", "results.json")
EVAL_TABLE = Output("eval", "results.md")
MTEB_COMPARISON = Output("eval", "mteb_comparison.json")
PUSHED = Output("publish", "pushed.json")  # the Hub commit of a pushed release


class RunFolderBusy(StRetrofitError, RuntimeError):
    """Another process holds the run folder."""


def partial_folder(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.partial"


def _old_folder(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.replaced"


def read_state(folder: Path) -> dict:
    """The ``stage.json`` record of a stage folder (``{}`` when there is none or it cannot be read)."""
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(folder: Path, record: dict) -> None:
    # Replaced in one step: other processes (and a crash) never see a half-written record.
    atomic_write_text(folder / STATE_FILE, json.dumps(record, indent=2))


def recover_swap(run_dir: Path, name: str) -> None:
    """Finish or undo a swap that a crash interrupted between its two renames."""
    final, old, partial = run_dir / name, _old_folder(run_dir, name), partial_folder(run_dir, name)
    if not final.exists() and old.exists():
        if read_state(partial).get("status") == "done":
            partial.rename(final)
        else:
            old.rename(final)
    if final.exists() and old.exists():
        shutil.rmtree(old)


def commit(run_dir: Path, name: str) -> Path:
    """Swap the finished ``<name>.partial`` in for ``<name>`` and drop the replaced output."""
    final, old, partial = run_dir / name, _old_folder(run_dir, name), partial_folder(run_dir, name)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def describe_error(exc: BaseException) -> str:
    """One line for the state record: the error type and the first line of its message."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


_HELD: dict[Path, tuple[object, int]] = {}


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (re-entrant within a process).

    Raises:
        RunFolderBusy: naming the pid, host and command of the process that holds it.
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        lock, depth = _HELD[run_dir]
        _HELD[run_dir] = (lock, depth + 1)
        try:
            yield
        finally:
            lock, depth = _HELD[run_dir]
            _HELD[run_dir] = (lock, depth - 1)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(_holder(run_dir)) from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}  # fmt: skip
    atomic_write_text(run_dir / ".lock.owner", json.dumps(owner))
    _HELD[run_dir] = (lock, 1)
    try:
        yield
    finally:
        _HELD.pop(run_dir, None)
        (run_dir / ".lock.owner").unlink(missing_ok=True)
        lock.release()


def _holder(run_dir: Path) -> str:
    try:
        owner = json.loads((run_dir / ".lock.owner").read_text())
    except (OSError, ValueError):
        return f"{run_dir} is in use by another st-retrofit process; wait for it to finish or stop it"
    return (
        f"{run_dir} is in use by pid {owner['pid']} on {owner['host']} since {owner['since']} ({owner['command']}); "
        "wait for it to finish or stop it"
    )
