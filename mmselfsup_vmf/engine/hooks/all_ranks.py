"""What every rank must do together, so that no collective sits in a path only some take.

mmengine's ``Runner.save_checkpoint`` is ``master_only``: its ``before_save_checkpoint``
hooks run on rank 0 alone, and a collective there waits forever for the other ranks (the
RNG-state gather of ``RandomStateHook`` did). The save paths of this package
(``FaultTolerantCheckpointHook``, ``StopOnSignalHook``) therefore call
``before_save_all_ranks(runner)`` on every rank first: each hook that defines a method of that
name gathers or checks there what the checkpoint needs, and ``before_save_checkpoint`` only
reads the result. A stop decision is global the same way: ranks agree with ``global_max``
before any of them raises, so all stop with the same message.
"""
from typing import Any, List

import torch
import torch.distributed as torch_dist
from mmengine import dist

from ...models.utils.dist import is_distributed


def before_save_all_ranks(runner) -> None:
    """Call ``hook.before_save_all_ranks(runner)`` of every hook that has it (all ranks)."""
    for hook in runner.hooks:
        prepare = getattr(hook, 'before_save_all_ranks', None)
        if callable(prepare):
            prepare(runner)


def host_group():
    """A gloo process group for host-side flags when the default backend is not gloo (NCCL
    moves a CPU tensor to the GPU and back, a device sync); None (the default group)
    otherwise. Every rank must call it, in the same order as its other group creations."""
    if not is_distributed() or torch_dist.get_backend() == 'gloo':
        return None
    return torch_dist.new_group(backend='gloo')


def _reduce(value: int, op: str, group=None) -> int:
    if not is_distributed():
        return int(value)
    flag = torch.tensor([int(value)], dtype=torch.long)
    if group is not None:  # on the host: no device involved
        torch_dist.all_reduce(flag, op=getattr(torch_dist.ReduceOp, op.upper()), group=group)
    else:
        dist.all_reduce(flag, op=op)  # mmengine moves it to the backend's device and back
    return int(flag.item())


def global_max(value: int, group=None) -> int:
    """The largest ``value`` over ranks (one small all-reduce; the value itself alone)."""
    return _reduce(value, 'max', group)


def global_sum(value: int) -> int:
    """The sum of ``value`` over ranks (one small all-reduce; the value itself alone)."""
    return _reduce(value, 'sum')


def gather(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    return dist.all_gather_object(obj) if is_distributed() else [obj]


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if is_distributed():
        dist.barrier()
