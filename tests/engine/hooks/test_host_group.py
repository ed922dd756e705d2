"""The ranks' stop agreement runs on the host: with a training backend other than gloo
(NCCL on GPUs, simulated here by the backend name) ``host_group`` creates a gloo group and
``global_max`` reduces a CPU tensor over it; with gloo the default group is used. Two gloo
processes."""
import os
import os.path as osp
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                            'integration'))
from test_fsdp2 import _free_port, init_gloo_rank  # noqa: E402


def _worker(rank, world, port, out_dir):
    init_gloo_rank(rank, world, port, 'host_group')
    from mmselfsup_vmf.engine.hooks import all_ranks
    try:
        default = all_ranks.host_group()
        real_backend = dist.get_backend
        dist.get_backend = lambda *args: 'nccl'  # as a GPU run's default group reports
        try:
            group = all_ranks.host_group()
        finally:
            dist.get_backend = real_backend
        result = dict(default=default, backend=dist.get_backend(group),
                      size=dist.get_world_size(group),
                      max=all_ranks.global_max(3 + rank, group=group),
                      max_default=all_ranks.global_max(7 - rank))
        torch.save(result, os.path.join(out_dir, f'{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_stop_agreement_uses_a_gloo_group_when_the_backend_is_not_gloo():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, nprocs=2, join=True, args=(2, _free_port(), out_dir))
        results = [torch.load(os.path.join(out_dir, f'{r}.pt')) for r in range(2)]
    for result in results:
        assert result == dict(default=None, backend='gloo', size=2, max=4, max_default=7)
