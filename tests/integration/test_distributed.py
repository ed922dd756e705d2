"""2 gloo processes, each with half of the global batch, give the same DINO loss (averaged
over ranks) and the same centre as 1 process on the whole batch, for both centrings,
over several steps (so a centre that drifted apart would change later losses)."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
from testing_utils import start_ranks

from mmselfsup_vmf.models.losses import DINOLoss

K, BATCH, STEPS, TEMP = 24, 6, 3, 0.05
CENTERINGS = ('logit', 'probability')


def batches():
    """Per step: (student views (4 x (B, K)), teacher views (2 x (B, K))), fixed seed."""
    gen = torch.Generator().manual_seed(0)
    offset = torch.linspace(-1.0, 1.0, K)  # makes the centre clearly non-uniform
    return [([torch.randn(BATCH, K, generator=gen) for _ in range(4)],
             [torch.randn(BATCH, K, generator=gen) * 0.5 + offset for _ in range(2)])
            for _ in range(STEPS)]


def run_steps(loss_module, rank=0, world=1):
    """Losses and centres after each step on this rank's contiguous share of the batch."""
    share = BATCH // world
    rows = slice(rank * share, (rank + 1) * share)
    losses, centres = [], []
    for student, teacher in batches():
        loss = loss_module([s[rows] for s in student], [t[rows] for t in teacher],
                           TEMP)['loss_dino']
        losses.append(loss.detach().clone())
        centres.append(loss_module.center.center.clone())
    return losses, centres


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    try:
        out = {}
        for centering in CENTERINGS:
            losses, centres = run_steps(DINOLoss(num_prototypes=K, centering=centering),
                                        rank, world)
            out[centering] = dict(losses=losses, centres=centres)
        torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def two_rank_results():
    """One pair of ranks for both centrings."""
    with tempfile.TemporaryDirectory() as out_dir:
        start_ranks(_worker, nprocs=2, join=True, args=(2, _free_port(), out_dir))
        return [torch.load(os.path.join(out_dir, f'rank{r}.pt')) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize('centering', CENTERINGS)
def test_two_ranks_equal_one_process(centering, two_rank_results):
    ranks = [r[centering] for r in two_rank_results]
    ref_losses, ref_centres = run_steps(DINOLoss(num_prototypes=K, centering=centering))
    for step in range(STEPS):
        # every rank holds the same all-reduced centre, bit for bit
        assert torch.equal(ranks[0]['centres'][step], ranks[1]['centres'][step])
        torch.testing.assert_close(ranks[0]['centres'][step], ref_centres[step],
                                   rtol=1e-6, atol=1e-7)
        # per-rank losses differ (different images) but their mean is the global loss
        assert not torch.equal(ranks[0]['losses'][step], ranks[1]['losses'][step])
        mean = (ranks[0]['losses'][step] + ranks[1]['losses'][step]) / 2
        torch.testing.assert_close(mean, ref_losses[step], rtol=1e-6, atol=1e-6)
    # the centre moved, so later steps really used the synchronised centre
    start = torch.zeros(K) if centering == 'logit' else torch.full((K,), 1.0 / K)
    assert (ref_centres[-1] - start).abs().max() > 1e-2
    # a rank that had NOT all-reduced would hold the centre of its half only
    _, local_centres = run_steps(DINOLoss(num_prototypes=K, centering=centering),
                                 rank=0, world=2)
    assert (local_centres[0] - ranks[0]['centres'][0]).abs().max() > 1e-4
