"""Evaluation: held-out retrieval per language, mteb tasks and benchmarks, and the ``eval`` stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from st_retrofit._lazy import lazy_exports

if TYPE_CHECKING:
    from st_retrofit.evaluation.config import EvalConfig
    from st_retrofit.evaluation.heldout import comparison_table, evaluate_retrieval, retrieval_tasks
    from st_retrofit.evaluation.mteb import beir_task, comparison, read_results, resolve_tasks, run_mteb
    from st_retrofit.evaluation.stage import eval_stage

_EXPORTS = {
    "EvalConfig": "st_retrofit.evaluation.config",
    "comparison_table": "st_retrofit.evaluation.heldout",
    "evaluate_retrieval": "st_retrofit.evaluation.heldout",
    "retrieval_tasks": "st_retrofit.evaluation.heldout",
    "beir_task": "st_retrofit.evaluation.mteb",
    "comparison": "st_retrofit.evaluation.mteb",
    "read_results": "st_retrofit.evaluation.mteb",
    "resolve_tasks": "st_retrofit.evaluation.mteb",
    "run_mteb": "st_retrofit.evaluation.mteb",
    "eval_stage": "st_retrofit.evaluation.stage",
    "mteb_stage": "st_retrofit.evaluation.stage",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
