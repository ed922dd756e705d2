"""tools/train.py and tools/demo.py pick the torch thread count with one helper: --threads
wins, then OMP_NUM_THREADS, then (CPU only) one thread per core not used by a data-loader
worker; both print the count."""
import os

import pytest
import torch
from testing_utils import load_tool

from mmselfsup_vmf.engine.threads import available_cores, cpu_thread_count, set_torch_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize('cores, workers, expected', [
    (2, 1, 1),   # the demo on this machine: the worker gets the other core
    (2, 0, 2),
    (1, 4, 1),   # never fewer than one
    (16, 4, 12),
])
def test_one_thread_per_core_left_by_the_workers(cores, workers, expected):
    assert cpu_thread_count(cores, workers) == expected


def test_cores_are_the_affinity_mask():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_requested_count_wins(keep_threads, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert set_torch_threads(3, loader_workers=1) == (3, 'torch threads: 3 (--threads)')
    assert torch.get_num_threads() == 3
    with pytest.raises(ValueError, match='--threads must be >= 1, got 0'):
        set_torch_threads(0, loader_workers=1)


def test_omp_num_threads_is_kept(keep_threads, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    torch.set_num_threads(1)
    assert set_torch_threads(None, loader_workers=0) == (1, 'torch threads: 1 (OMP_NUM_THREADS)')


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU rule applies without CUDA only')
def test_cpu_default_follows_the_cores_and_workers(keep_threads, monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS')
    cores = len(os.sched_getaffinity(0))
    n, line = set_torch_threads(None, loader_workers=1)
    assert n == max(1, cores - 1) == torch.get_num_threads()
    assert line == (f'torch threads: {n} ({cores} CPU cores, 1 data-loader workers; '
                    '--threads N to change)')


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/demo.py'])
def test_both_tools_take_threads_and_use_the_same_helper(tool, keep_threads):
    module = load_tool(tool, f'threads_{os.path.basename(tool)}')
    assert module.set_torch_threads is set_torch_threads
    argv = ['cfg.py'] if tool == 'tools/train.py' else []
    assert module.parse_args(argv + ['--threads', '2']).threads == 2
    assert module.parse_args(argv).threads is None
