"""Multi-process training helpers for ``torchrun``: setup, sharded infinite sampling, SyncBN, reductions.

One process per device; ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Backend: NCCL on GPUs, gloo on CPU (which is how the 2-process test runs in CI).
Why an own sampler: an iteration-based schedule wants an endless, *deterministic* stream whose
position is a pure function of the iteration, so that a resumed run, a run on another number of
processes and an uninterrupted run all see the same global batches in the same order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

__all__ = ["DistInfo", "init_distributed", "cleanup", "barrier", "all_reduce_sum",
           "broadcast_object", "all_gather_object", "InfiniteShardedSampler",
           "CPUSyncBatchNorm", "convert_sync_batchnorm", "env_world_size"]


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(device_type: str = "cpu", timeout_s: Optional[float] = None) -> DistInfo:
    """Join the torchrun job described by the environment (no-op for a single process).

    Reuses a process group that is already initialized (e.g. by a caller's launcher).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        dist.get_backend(), False)
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    kwargs = {}
    if timeout_s is not None:
        import datetime

        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistInfo(rank, world, local_rank, backend, True)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def _reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if not _active():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.cuda()
        dist.all_reduce(moved, op=op)
        return moved.to(tensor.device)
    out = tensor.clone()
    dist.all_reduce(out, op=op)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor; the input itself when not distributed)."""
    return _reduce(tensor, dist.ReduceOp.SUM)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s Python object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list:
    """Every rank's object, indexed by rank."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class InfiniteShardedSampler(Sampler):
    """Endless stream of ``(dataset index, global position)`` pairs for one rank.

    Global sample position ``p`` maps to epoch ``p // N`` and to entry ``p % N`` of a permutation seeded
    by ``seed + epoch`` (as DistributedSampler seeds its epochs). Iteration ``t`` consumes positions
    ``t*B .. (t+1)*B - 1`` (``B`` = global batch); within it, accumulation step ``a`` of rank ``r`` takes the
    ``micro`` positions starting at ``t*B + (a*world + r)*micro``. So the global batch of an iteration
    does not depend on the number of processes, and ``start_iter`` resumes mid-epoch exactly.
    The position is handed to the dataset so that augmentation can be seeded by it, too.
    """

    def __init__(self, dataset_len: int, global_batch: int, world_size: int = 1, rank: int = 0,
                 accum_steps: int = 1, seed: int = 0, shuffle: bool = True, start_iter: int = 0) -> None:
        if dataset_len <= 0:
            raise ValueError("the training dataset is empty")
        if global_batch % (world_size * accum_steps):
            raise ValueError(f"batch size {global_batch} is not divisible by processes x accumulation steps "
                             f"({world_size} x {accum_steps})")
        self.n = int(dataset_len)
        self.global_batch = int(global_batch)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.accum_steps = int(accum_steps)
        self.micro = self.global_batch // (self.world_size * self.accum_steps)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.start_iter = int(start_iter)

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g)

    def index_at(self, position: int) -> int:
        """Dataset index of a global position (for tests and tools)."""
        return int(self._perm(position // self.n)[position % self.n])

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        it = self.start_iter
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        while True:
            base = it * self.global_batch
            for a in range(self.accum_steps):
                start = base + (a * self.world_size + self.rank) * self.micro
                for p in range(start, start + self.micro):
                    if p // self.n != epoch:
                        epoch = p // self.n
                        perm = self._perm(epoch)
                    yield int(perm[p % self.n]), p
            it += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over all ranks, on any device.

    ``nn.SyncBatchNorm`` only runs on GPUs; this one all-reduces per-channel sums, sums of squares
    and counts through the autograd-aware ``torch.distributed.nn.all_reduce`` (gloo works), so
    CPU multi-process training normalizes with the global batch's statistics, as one process would.
    Outside distributed training mode it is a plain BatchNorm2d.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Module signature)
        if not (self.training and _active()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce as ad_all_reduce

        c = input.shape[1]
        x = input.float()
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        stats = ad_all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace the BatchNorm layers of ``module`` by synchronized ones (torch's on GPU, ours on CPU).

    Call it on the part that trains its BatchNorm (the decoder); frozen encoder BN layers run in
    eval mode, where synchronization does nothing anyway.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=_dev(module), dtype=_dtype(module))
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, device_type)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _dev(module: nn.Module) -> Optional[torch.device]:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


def _dtype(module: nn.Module) -> Optional[torch.dtype]:
    for t in module.parameters():
        return t.dtype
    return None
