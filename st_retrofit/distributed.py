"""What the pipeline needs to know under ``torchrun`` / ``accelerate launch``: which process is the main one, and
a barrier.

The launcher sets ``WORLD_SIZE``/``RANK``; the first call here joins the process group (NCCL on GPUs, gloo on
CPUs), and the trainer's accelerate state then reuses it. Without a launcher (``WORLD_SIZE`` unset or 1) nothing
is initialized and every call is free.
"""

from __future__ import annotations

import os
from datetime import timedelta

# The main process may run a whole stage (synthesis, mining) while the others wait at a barrier; the default
# 30 minutes would kill a long one. Run long synth/mine stages before the launch to avoid the wait altogether.
BARRIER_TIMEOUT = timedelta(hours=int(os.environ.get("ST_RETROFIT_BARRIER_TIMEOUT_HOURS", "12")))


def world_size() -> int:
    """The number of processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def join_process_group():
    """``torch.distributed`` with this process in the group, joined on first use with :data:`BARRIER_TIMEOUT`.
    Call it before the trainer's arguments are built, or accelerate joins with the 30-minute default."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=BARRIER_TIMEOUT)
    return dist


def rank() -> int:
    return join_process_group().get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Whether this process writes the run folder's shared files (global rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed():
        join_process_group().barrier()
