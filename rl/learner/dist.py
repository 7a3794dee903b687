"""Process-group helpers that degrade to no-ops in a single process.

Every learner and the trainer call these instead of ``torch.distributed`` directly, so the same
code runs as one process, under ``torchrun`` (gloo on CPU, NCCL on CUDA) and inside Ray actors.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT). Returns True when running with more than one process."""
    if is_initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process); returns ``t``."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (identity in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank (``[obj]`` in one process)."""
    if not is_initialized():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
