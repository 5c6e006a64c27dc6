"""Data-parallel helpers over `torch.distributed` (torchrun; gloo on CPU, NCCL on GPUs).

Data parallelism here is explicit rather than through DistributedDataParallel, because
one trainer steps several dictionaries with their own optimizers and bookkeeping:
every rank draws the same global batch from the (deterministic) source and trains on its
own contiguous slice; gradients are averaged with one all-reduce per dictionary;
which latents fired is OR-reduced (so dead-latent tracking sees the global batch);
BatchTopK's smallest selected activation is MIN-reduced. Only rank 0 writes files.

With world size W and a global batch B, each rank's slice is B/W rows and the averaged
gradient equals the single-process gradient of the mean loss over the B rows (up to
float rounding), so training matches a one-process run. BatchTopK selects its k*B/W
entries within each slice (a per-rank budget), the one rule that differs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def backend() -> str | None:
    """The process group's backend ('gloo', 'nccl'), None when not distributed."""
    return str(dist.get_backend()) if is_distributed() else None


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); returns
    whether training is distributed. backend default: nccl with CUDA, else gloo."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def local_slice(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch [B, ...] (B divisible by the world size)."""
    world = world_size()
    if world == 1:
        return batch
    share = batch.shape[0] // world
    return batch[rank() * share:(rank() + 1) * share]


def average_gradients(parameters) -> None:
    """All-reduce (mean) the gradients of `parameters` across ranks, in one flat buffer."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_across_ranks(mask: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a bool tensor across ranks."""
    if not is_distributed():
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def min_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.clone().float()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def flag_across_ranks(flag: bool, device: torch.device) -> bool:
    """True if any rank raised the flag (keeps ranks in step when one sees a NaN)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
