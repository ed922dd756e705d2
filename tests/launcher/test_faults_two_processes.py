"""Faults on one rank of a 2-process run of the DINO recipe (shrunk, ``launch_utils``): every
case ends with both ranks stopped, no hang (the process group times out after 60 s, the
tests wait at most a few minutes), the same one-line message and exit code on both ranks,
and nothing non-finite or incomplete on disk.

- ``kill -9`` of rank 1: torchrun ends rank 0; the last checkpoint is complete and
  ``--resume`` finishes the run bitwise as an uninterrupted one.
- divergence (lr = 1e6): both ranks raise the same ``error: training diverged ...``.
- an unreadable image, met by one rank only: both ranks stop with the same message naming it.
- per-rank randomness (``randomness.diff_rank_seed=True``): the ranks' random streams differ,
  their initial weights do not (DDP and FSDP2).
"""
import glob
import json
import os.path as osp

import pytest
import torch
from launch_utils import (
    EPOCHS,
    ITERS,
    TRAIN_ARGS,
    dist_train,
    dump,
    final_state,
    forked_ranks,
    make_images,
    shrunk_recipe,
    wait_group,
)
from testing_utils import assert_bitwise_equal

from mmselfsup_vmf.utils.safe_load import load_checkpoint_file

pytestmark = pytest.mark.launcher



def assert_finite_checkpoints(work_dir):
    for path in glob.glob(osp.join(work_dir, '*.pth')):
        state = load_checkpoint_file(path)['state_dict']
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        assert not bad, f'{path}: non-finite {bad[:3]}'


def assert_one_message(results, starts):
    (code0, msg0), (code1, msg1) = results
    assert code0 == code1 == 1, results
    assert msg0 == msg1, results  # the same stop, said the same way on every rank
    assert msg0.startswith(starts) and '\n' not in msg0, msg0


def test_kill_9_of_one_rank_stops_the_job_and_resume_is_exact(tmp_path):
    data = make_images(tmp_path / 'data')
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    cfg_path = dump(shrunk_recipe('dino', ref, data), tmp_path / 'cfg.py')
    assert forked_ranks(cfg_path, ref, *TRAIN_ARGS) == [(0, ''), (0, '')]

    kill = dict(type='KillRankHook', rank=1, after_iter=ITERS + 1)  # inside epoch 2
    kill_path = dump(shrunk_recipe('dino', cut, data), tmp_path / 'cfg_kill.py',
                     probes=[kill])
    proc = dist_train(kill_path, cut, *TRAIN_ARGS)
    assert wait_group(proc, timeout=180), 'a rank outlived the killed one (a hang)'
    assert proc.returncode != 0
    log = open(cut / 'launcher.log').read()
    assert 'exitcode: -9' in log, log[-3000:]
    assert not glob.glob(str(cut / '*.tmp'))  # no partial file under any name
    last = open(cut / 'last_checkpoint').read()
    assert last.endswith('epoch_1.pth')  # the save before the kill, complete
    assert load_checkpoint_file(last)['meta']['epoch'] == 1

    assert forked_ranks(cfg_path, cut, *TRAIN_ARGS, '--resume') == [(0, ''), (0, '')]
    assert_bitwise_equal(final_state(load_checkpoint_file(str(ref / f'epoch_{EPOCHS}.pth'))),
                         final_state(load_checkpoint_file(str(cut / f'epoch_{EPOCHS}.pth'))))


def test_divergence_stops_both_ranks_with_one_message(tmp_path):
    data = make_images(tmp_path / 'data')
    cfg = shrunk_recipe('dino', tmp_path / 'work', data)
    cfg.optim_wrapper.optimizer.lr = 1e6
    # fp32: a non-finite step is an error at once (the recipe's fp16 loss scaler skips such
    # steps up to max_skipped_steps, tests/engine/hooks/test_divergence_guard.py)
    cfg.optim_wrapper.type = 'DistillOptimWrapper'
    for key in ('dtype', 'loss_scale'):
        cfg.optim_wrapper.pop(key)
    results = forked_ranks(dump(cfg, tmp_path / 'cfg.py'), tmp_path / 'work', *TRAIN_ARGS)
    assert_one_message(results, 'error: training diverged (rank ')
    assert 'stopped without saving non-finite weights' in results[0][1]
    assert_finite_checkpoints(tmp_path / 'work')


def test_unreadable_image_on_one_rank_stops_both_ranks(tmp_path):
    data = make_images(tmp_path / 'data')
    broken = osp.join(data, 'img_005.jpg')
    with open(broken, 'wb') as f:
        f.write(b'\xff\xd8 not a jpeg')
    cfg = shrunk_recipe('dino', tmp_path / 'work', data)
    cfg.train_dataloader.dataset.update(skip_bad_samples=True, max_bad_fraction=0.0)
    results = forked_ranks(dump(cfg, tmp_path / 'cfg.py'), tmp_path / 'work', *TRAIN_ARGS)
    assert_one_message(results, 'error: 1 of 16 samples are unreadable, more than '
                                'train_dataloader.dataset.max_bad_fraction=0.0')
    assert 'img_005.jpg' in results[0][1]
    # one file, read once in epoch 1: exactly one rank met it (the other stopped with it)
    assert not glob.glob(str(tmp_path / 'work' / 'epoch_*.pth'))


@pytest.mark.parametrize('method', ['dino', pytest.param('simdinov2_fsdp',
                                                         marks=pytest.mark.slow)])
def test_per_rank_seeds_keep_one_initialisation(method, tmp_path):
    data = make_images(tmp_path / 'data')
    cfg = shrunk_recipe(method, tmp_path / 'work', data)
    cfg.randomness.diff_rank_seed = True
    path = dump(cfg, tmp_path / 'cfg.py', probes=[dict(type='RecordRankHook')])
    assert forked_ranks(path, tmp_path / 'work', '--epochs', '1', '--epoch-iters',
                        str(ITERS)) == [(0, ''), (0, '')]
    first, second = [json.load(open(tmp_path / 'work' / f'probe_rank{r}.json'))
                     for r in range(2)]
    assert (first['torch_seed'], second['torch_seed']) == (0, 1)  # seed + rank, as DINOv2
    assert not torch.allclose(torch.tensor(first['draw']), torch.tensor(second['draw']))
    assert first['weights'] == second['weights']  # rank 0's initialisation everywhere
