"""Distributed set-up: one process, or torchrun's ranks with DDP.

The job is distributed when torchrun's ``WORLD_SIZE`` > 1 (``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` from torchrun, any of its single- or multi-node flags); a
plain ``python3 -m fastdehaze train`` needs no torchrun. Backend: nccl on CUDA (each rank on
``cuda:LOCAL_RANK``), gloo on CPU; the process-group timeout is ``run.pg_timeout_s``.

Batch and learning rate: ``run.batch_size`` is the GLOBAL batch; each of the N ranks loads
batch_size / N samples (batch_size must be divisible by N) from its DistributedSampler shard,
and DDP averages the gradients, so a step on N ranks is the step of one process on the global
batch (tested). ``optim.lr`` is therefore for the global batch and is NOT rescaled with N: keep
the global batch when you add GPUs and nothing changes; if you raise it, raise lr yourself
(linear scaling is the usual rule for Adam at small batches; square-root beyond).

Rank 0 alone validates, logs and writes checkpoints. Every step the ranks all-reduce (MAX) a
stop flag (set by SIGINT/SIGTERM or ``run.stop_at_step``), so all stop after the same step and
none waits forever for one that was interrupted.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "teardown", "all_reduce_flag"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"run.device: {device!r} but CUDA is not available")
        dev = torch.device("cuda", local) if world > 1 or device == "cuda" else torch.device(device)
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"run.device: must be cpu, cuda, cuda:N or auto, got {device!r}")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is True on any rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
