"""Distributed helpers: no-ops in one process; sums/means and the autograd rule on 2 ranks."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
from testing_utils import start_ranks

from mmselfsup_vmf.models.utils import (
    all_reduce_mean,
    differentiable_all_reduce_sum,
    global_batch_size,
    is_distributed,
    world_size,
)


def test_single_process_is_a_no_op():
    assert not is_distributed() and world_size() == 1
    assert global_batch_size(64) == 64
    buf = torch.tensor([1.0, 3.0])
    assert all_reduce_mean(buf) is buf and buf.tolist() == [1.0, 3.0]
    x = torch.tensor([2.0, -1.0], requires_grad=True)
    y = differentiable_all_reduce_sum(x)
    (y * torch.tensor([5.0, 7.0])).sum().backward()
    assert x.grad.tolist() == [5.0, 7.0]


def test_bad_input():
    with pytest.raises(ValueError, match='local_n'):
        global_batch_size(-1)
    with pytest.raises(TypeError, match='Tensor'):
        all_reduce_mean([1.0])
    with pytest.raises(TypeError, match='Tensor'):
        differentiable_all_reduce_sum(3.0)


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    try:
        from mmselfsup_vmf.models import utils as mutils
        out = dict(is_dist=mutils.is_distributed(), world=mutils.world_size(),
                   global_n=mutils.global_batch_size(3))
        buf = torch.tensor([float(rank), 10.0 * rank])
        out['mean'] = mutils.all_reduce_mean(buf).tolist()
        x = torch.tensor([1.0 + rank, -2.0 * rank], requires_grad=True)
        y = mutils.differentiable_all_reduce_sum(x)
        # upstream gradient differs per rank: backward must sum it over ranks
        (y * torch.tensor([1.0 + rank, 3.0])).sum().backward()
        out['sum'] = y.tolist()
        out['grad'] = x.grad.tolist()
        torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_ranks():
    with tempfile.TemporaryDirectory() as out_dir:
        start_ranks(_worker, nprocs=2, join=True, args=(2, _free_port(), out_dir))
        outs = [torch.load(os.path.join(out_dir, f'rank{r}.pt')) for r in range(2)]
    for out in outs:
        assert out['is_dist'] and out['world'] == 2 and out['global_n'] == 6
        assert out['mean'] == [0.5, 5.0]
        assert out['sum'] == [3.0, -2.0]
        # d/dx_r Σ_k u_k·(x_0 + x_1) = u_0 + u_1 on every rank
        assert out['grad'] == [1.0 + 2.0, 3.0 + 3.0]


def test_finite_flags_per_tensor():
    from mmselfsup_vmf.models.utils.dist import finite_flags
    big = torch.full((4, ), 3e38)  # finite; its L2 norm would overflow float32
    tensors = [torch.ones(3), None, torch.tensor([1.0, float('nan')]),
               torch.tensor([-float('inf')]), big, torch.zeros(0),
               torch.tensor([1.0, float('inf')], dtype=torch.bfloat16), torch.ones(2).half()]
    flags = finite_flags(tensors, torch.device('cpu'))
    assert flags.tolist() == [True, True, False, False, True, True, False, True]
    assert finite_flags([None], torch.device('cpu')).tolist() == [True]
