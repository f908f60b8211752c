"""Two processes (gloo on 127.0.0.1), each holding half of a batch, give the same loss as one process with all of it."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from st_retrofit.losses import RetrofitInfoNCELoss

SETTINGS = {
    "scale": 20.0,
    "query_negatives": True,
    "false_negative_margin": 0.3,
    "margin_strategy": "relative",
    "teacher_margin": 0.1,
    "distill_weight": 0.5,
    "return_components": False,
}


def _batch():
    generator = torch.Generator().manual_seed(0)
    embeddings = [F.normalize(torch.randn(8, 16, generator=generator), dim=-1) for _ in range(3)]
    teacher = torch.rand(8, 2, generator=generator)
    tasks = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1])
    return embeddings, {"teacher_scores": teacher, "task_ids": tasks}


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=None)
    try:
        embeddings, labels = _batch()
        half = slice(rank * 4, rank * 4 + 4)
        local = [e[half] for e in embeddings]
        local_labels = {k: v[half] for k, v in labels.items()}
        loss = RetrofitInfoNCELoss(None, gather_across_devices=True, **SETTINGS)
        results[rank] = loss.compute_loss_from_embeddings(local, local_labels).item()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_whole_batch():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)

    embeddings, labels = _batch()
    single = RetrofitInfoNCELoss(None, **SETTINGS).compute_loss_from_embeddings(embeddings, labels).item()
    assert (results[0] + results[1]) / 2 == pytest.approx(single, abs=1e-5)
