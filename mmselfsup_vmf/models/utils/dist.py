"""Small distributed helpers shared by the losses and algorithms.

All of them are no-ops (or return the local value) when ``torch.distributed`` is not
initialised, so the same code runs in single-process tests and under DDP.

Two kinds of reduction are needed and they must not be mixed up:

- ``all_reduce_mean``: in-place, no autograd, for running buffers (e.g. a centre).
- ``differentiable_all_reduce_sum``: out-of-place and autograd-aware. Its backward is an
  all-reduce SUM of the incoming gradients, so if every rank computes the same scalar
  f(Σ_r x_r), the gradient reaching rank r's x_r is N·∂f/∂x_r; DDP's gradient averaging
  (÷N) then gives exactly the gradient of the global objective.
"""
from typing import Optional, Sequence

import torch
import torch.distributed as torch_dist
from mmengine import dist as mm_dist
from torch import Tensor
from torch.distributed.tensor import DTensor


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default group (1 when not distributed)."""
    return mm_dist.get_world_size()


def global_batch_size(local_n: int) -> int:
    """Global batch n = m·N for a per-rank batch m, assuming every rank has m samples.

    This is the convention of the official SimDINO code (``m * N`` with drop_last=True
    samplers); it does not communicate.
    """
    if int(local_n) != local_n or local_n < 0:
        raise ValueError(f'local_n must be a non-negative integer, got {local_n!r}')
    return int(local_n) * world_size()


@torch.no_grad()
def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over ranks in place (no autograd); returns the same tensor.

    Meant for buffers such as running centres. Does nothing when not distributed.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f'all_reduce_mean expects a Tensor, got {type(tensor).__name__}')
    mm_dist.all_reduce(tensor, op='mean')
    return tensor


def differentiable_all_reduce_sum(tensor: Tensor,
                                  group: Optional[object] = None) -> Tensor:
    """Σ_r tensor_r with autograd (backward = all-reduce SUM of the gradients).

    Returns ``tensor`` itself when not distributed (or world size 1).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(
            f'differentiable_all_reduce_sum expects a Tensor, got {type(tensor).__name__}')
    if not is_distributed() or torch_dist.get_world_size(group) == 1:
        return tensor
    # Imported lazily: ``torch.distributed.nn`` is not imported by ``torch.distributed``
    # (the SimDINOv2 code hit an AttributeError because of that).
    from torch.distributed.nn.functional import all_reduce
    kwargs = {} if group is None else {'group': group}
    return all_reduce(tensor, op=torch_dist.ReduceOp.SUM, **kwargs)


def local_shard(tensor: Tensor) -> Tensor:
    """The tensor this rank stores: a DTensor's local shard (aliasing it), else ``tensor``."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def finite_flags(tensors: Sequence[Optional[Tensor]], device: torch.device) -> Tensor:
    """One bool per tensor: all its entries are finite (None counts as finite).

    Sharded tensors (FSDP's DTensors) are checked on the local shard and the flags are
    combined over ranks with one all-reduce (MIN) of the flag vector, so every rank holds the
    same flags and stops at the same step.
    """
    # one foreach max-|x| over all tensors (NaN propagates, a finite max cannot overflow)
    # instead of an isfinite and an all kernel per tensor; empty tensors count as finite
    checked = [t is not None and local_shard(t).numel() > 0 for t in tensors]
    maxima = iter(torch._foreach_norm([local_shard(t) for t, c in zip(tensors, checked) if c],
                                      float('inf')) if any(checked) else [])
    flags = torch.stack([torch.isfinite(next(maxima)) if c
                         else torch.ones((), dtype=torch.bool, device=device)
                         for c in checked])
    if is_distributed() and any(isinstance(t, DTensor) for t in tensors):
        as_int = flags.to(torch.int32)  # collectives do not reduce bool tensors
        torch_dist.all_reduce(as_int, op=torch_dist.ReduceOp.MIN)
        flags = as_int.bool()
    return flags
