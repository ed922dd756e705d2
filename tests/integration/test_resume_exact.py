"""Exact resume on CPU: 4 epochs straight vs 2 epochs, resume (in a process whose RNGs have
been disturbed) and finish -> bitwise identical student, teacher, centre, optimiser state,
parameter-scheduler state and iteration counter. The student has drop-path > 0, so the
model's own randomness must be restored too (RandomStateHook); the augmentations depend on
(seed, epoch, index) only (EpochIndexSampler + SeededDataset)."""
import random

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from testing_utils import assert_bitwise_equal  # noqa: F401  (re-exported)
from tiny_dino_cfg import tiny_dino_cfg

EPOCHS, ITERS = 4, 2


class _DisturbRNG(Hook):
    """A resumed process has another RNG history: draw from every generator first."""
    priority = 'VERY_HIGH'

    def before_train(self, runner):
        random.random()
        np.random.rand(5)
        torch.rand(11)


class _Losses(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.by_iter = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.by_iter[runner.iter] = outputs['loss'].detach().clone()




def final_state(runner):
    return dict(model=runner.model.state_dict(),
                optimizer=runner.optim_wrapper.state_dict(),
                schedulers=[s.state_dict() for s in runner.param_schedulers],
                hub_iter=runner.message_hub.get_info('iter'), iter=runner.iter,
                epoch=runner.epoch)


def run(work_dir, resume_from=None, random_state_hook=True, configure=None, recorder=_Losses):
    """Train EPOCHS epochs (or resume); ``configure(cfg)`` edits the config first; returns the
    runner and what ``recorder`` (a hook class with ``by_iter``) saw."""
    cfg = tiny_dino_cfg(work_dir, epochs=EPOCHS, drop_path=0.2)
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1  # keep epoch_2.pth for the resume
    if not random_state_hook:
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'RandomStateHook']
    if configure is not None:
        configure(cfg)
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, resume_from
    runner = Runner.from_cfg(cfg)
    record = recorder()
    runner.register_hook(record)
    if resume_from is not None:
        runner.register_hook(_DisturbRNG())
    runner.train()
    return runner, record.by_iter


@pytest.mark.slow
def test_resume_after_two_epochs_is_bitwise_identical(tmp_path):
    straight, straight_losses = run(tmp_path / 'straight')
    resumed, resumed_losses = run(tmp_path / 'resumed',
                                  resume_from=str(tmp_path / 'straight' / 'epoch_2.pth'))
    assert sorted(resumed_losses) == list(range(2 * ITERS, EPOCHS * ITERS))  # 0-based
    for it, loss in resumed_losses.items():
        assert torch.equal(loss, straight_losses[it]), f'loss of iteration {it}'
    a, b = final_state(straight), final_state(resumed)
    assert a['iter'] == EPOCHS * ITERS and a['epoch'] == EPOCHS
    assert a['hub_iter'] == EPOCHS * ITERS - 1  # RuntimeInfoHook: the last iteration run
    assert any(k.startswith('teacher.') for k in a['model'])
    assert 'loss_module.center.center' in a['model']
    assert a['optimizer']['state']  # AdamW moments exist
    assert_bitwise_equal(a, b)

    # Control: without RandomStateHook the resumed drop-path masks differ, so the same
    # comparison must fail (the test above is not vacuous).
    unhooked, _ = run(tmp_path / 'unhooked',
                      resume_from=str(tmp_path / 'straight' / 'epoch_2.pth'),
                      random_state_hook=False)
    with pytest.raises(AssertionError, match='differs'):
        assert_bitwise_equal(a['model'], final_state(unhooked)['model'])
