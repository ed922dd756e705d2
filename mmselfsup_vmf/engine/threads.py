"""How many torch threads a CPU-only run uses (tools/train.py and tools/demo.py).

On a CPU, torch defaults to one OpenMP thread per core, and data-loader worker processes
compete for the same cores; OpenMP threads spin-wait, so on a busy 2-core machine an
iteration with 2 threads + 1 worker is several times slower than with 1 thread.
"""
import os
from typing import Optional, Tuple


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, e.g. under slurm or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_thread_count(cores: int, loader_workers: int) -> int:
    """One thread per core left over by the data-loader workers, at least one."""
    return max(1, cores - max(0, loader_workers))


def set_torch_threads(requested: Optional[int], loader_workers: int) -> Tuple[int, str]:
    """Set torch's intra-op thread count; returns (count, a one-line reason to print).

    ``requested`` (a ``--threads`` value) wins; otherwise ``OMP_NUM_THREADS`` if set; otherwise,
    without CUDA, :func:`cpu_thread_count`. With CUDA the count is left to torch.
    """
    import torch
    if requested is not None:
        if requested < 1:
            raise ValueError(f'--threads must be >= 1, got {requested}')
        torch.set_num_threads(requested)
        return requested, f'torch threads: {requested} (--threads)'
    if os.environ.get('OMP_NUM_THREADS'):
        n = torch.get_num_threads()
        return n, f'torch threads: {n} (OMP_NUM_THREADS)'
    if torch.cuda.is_available():
        n = torch.get_num_threads()
        return n, f'torch threads: {n} (torch default; CUDA run)'
    cores = available_cores()
    n = cpu_thread_count(cores, loader_workers)
    torch.set_num_threads(n)
    return n, (f'torch threads: {n} ({cores} CPU cores, {loader_workers} data-loader '
               'workers; --threads N to change)')
