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
from mmengine import dist

from ...models.utils.dist import is_distributed


def before_save_all_ranks(runner) -> None:
    """Call ``hook.before_save_all_ranks(runner)`` of every hook that has it (all ranks)."""
    for hook in runner.hooks:
        prepare = getattr(hook, 'before_save_all_ranks', None)
        if callable(prepare):
            prepare(runner)


def _reduce(value: int, op: str) -> int:
    if not is_distributed():
        return int(value)
    flag = torch.tensor([int(value)], dtype=torch.long)
    dist.all_reduce(flag, op=op)  # mmengine moves it to the backend's device and back
    return int(flag.item())


def global_max(value: int) -> int:
    """The largest ``value`` over ranks (one small all-reduce; the value itself alone)."""
    return _reduce(value, 'max')


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
