"""Process-group helpers that degrade to no-ops in a single process.

Every learner and the trainer call these instead of ``torch.distributed`` directly, so the same
code runs as one process, under ``torchrun`` (gloo on CPU, NCCL on CUDA) and inside Ray actors.

The backend follows the device this process computes on (``rl.models.resolve_device``, the
``model.device`` setting): NCCL only when that is a CUDA device, gloo otherwise. Because
``resolve_device("auto")`` gives every rank of a node the same answer (CPU when the node has
fewer visible GPUs than local ranks, or when ``DS_ACCELERATOR`` names a CPU accelerator), the
ranks agree on the backend without talking to each other.
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


def backend_for(device: torch.device | str) -> str:
    """The process-group backend for ranks computing on ``device``: nccl (CUDA) | gloo."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _backend_and_device(backend: str | None, device) -> tuple[str, torch.device]:
    from rl.models import resolve_device

    dev = resolve_device(device)
    backend = backend or backend_for(dev)
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"process-group backend nccl needs a CUDA device; this rank runs on "
                         f"{dev} (model.device)")
    return backend, dev


def init_from_env(backend: str | None = None, device: torch.device | str | None = None) -> bool:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT). Returns True when running with more than one process.

    ``device``: this rank's compute device spec (``model.device``; None = auto); the backend
    defaults to the one that device needs (:func:`backend_for`)."""
    if is_initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend, dev = _backend_and_device(backend, device)
    if backend == "nccl":  # NCCL collectives (object ones too) run on this rank's device
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend)
    return True


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), None without a group."""
    return str(dist.get_backend()) if is_initialized() else None


def group_device() -> torch.device:
    """The device this process group communicates on: the current CUDA device under NCCL, the
    CPU otherwise (also with no group)."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not is_initialized():
        return t
    if dist.get_backend() == "nccl" and not t.is_cuda:  # NCCL reduces device tensors only
        dev = t.to(group_device())
        dist.all_reduce(dev, op=op)
        t.copy_(dev.cpu())
    else:
        dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process); returns ``t``."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place max over ranks (identity in one process); returns ``t``."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (collective)."""
    return bool(all_reduce_max(torch.tensor([float(flag)]))[0] > 0)


def shard(items: list, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's contiguous share of ``items`` (sizes differ by at most one; rank order)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    n, extra = divmod(len(items), w)
    start = r * n + min(r, extra)
    return items[start : start + n + (1 if r < extra else 0)]


def free_port() -> int:
    """An unused TCP port on this host (for a single-process group or a test's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_single_process(backend: str | None = None,
                        device: torch.device | str | None = None) -> None:
    """A process group of one (rank 0 of 1), for libraries that insist on one (DeepSpeed).
    ``device`` / ``backend`` as in :func:`init_from_env`."""
    if is_initialized():
        return
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                 ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend, dev = _backend_and_device(backend, device)
    if backend == "nccl":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=0, world_size=1)


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


def gather_to_main(obj) -> list | None:
    """Every rank's object, in rank order, on rank 0; ``None`` on the other ranks (``[obj]`` in
    one process). Half the traffic of :func:`gather_objects` when only rank 0 needs them."""
    if not is_initialized():
        return [obj]
    out: list | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def check_data_parallel(cfg, multi: bool) -> None:
    """Refuse data-parallel setups (``cfg``: rl.config.Config) that would silently train
    something else."""
    if not multi:
        return
    world = world_size()
    if cfg.learner.backend != "deepspeed":
        raise SystemExit(f"turnrl: {world} processes need a data-parallel learner: "
                         "learner=deepspeed_zero2 or learner=deepspeed_zero3")
    if cfg.trainer.tasks_per_step < world:
        raise SystemExit(f"turnrl: trainer.tasks_per_step={cfg.trainer.tasks_per_step} < "
                         f"{world} processes: every rank needs at least one task (group)")
