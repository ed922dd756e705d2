"""DivergenceGuardHook: a diverging run stops with one line naming the iteration and the term,
no checkpoint of non-finite weights is written, ``last_checkpoint`` names a finite one, the
per-step path makes no device->host read, and fp16 loss-scaler skips are tolerated up to a
limit. Divergence is real (lr = 1e6, data with infinities), checked against the checkpoint
files on disk."""
import glob
import os.path as osp
import re

import pytest
import torch
from integration.tiny_dino_cfg import ROOT, tiny_dino_cfg, tiny_method_cfg
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from testing_utils import load_tool
from torch.utils._python_dispatch import TorchDispatchMode

from mmselfsup_vmf.engine.hooks import DivergenceGuardHook
from mmselfsup_vmf.engine.hooks.divergence_guard import nonfinite_tensors

DIVERGED = re.compile(r'^training diverged at iteration (\d+): non-finite (loss_\w+=(nan|inf))')


def assert_only_finite_checkpoints(work_dir):
    """Every .pth on disk has finite weights; last_checkpoint names one of them."""
    paths = glob.glob(osp.join(work_dir, '*.pth'))
    for path in paths:
        state = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
        for key, value in state.items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), f'{path}: {key} is not finite'
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() in paths


@pytest.mark.slow
@pytest.mark.parametrize('method', ['dino', 'dino_vmf', 'simdino', 'ibot'])
def test_lr_1e6_stops_with_the_iteration_and_term(tmp_path, method, capsys):
    """Reproduction: lr=1e6. The warm-up keeps epoch 1 finite (its checkpoint is saved);
    the run must stop at the first non-finite loss, before any later save."""
    cfg = tiny_method_cfg(method, tmp_path / 'work')
    cfg.optim_wrapper.optimizer.lr = 1e6
    cfg.dump(str(tmp_path / 'cfg.py'))
    with pytest.raises(SystemExit) as excinfo:  # tools/train.py: one line, exit status 1
        load_tool('tools/train.py', 'train_tool_guard').main([str(tmp_path / 'cfg.py')])
    assert 'torch threads: 1 (OMP_NUM_THREADS)' in capsys.readouterr().out  # conftest's 1
    assert str(excinfo.value.code).startswith('error: ')
    message = str(excinfo.value.code)[len('error: '):]
    assert '\n' not in message
    match = DIVERGED.match(message)
    assert match, message
    assert int(match.group(1)) > 2  # epoch 1 (iterations 1-2) was finite
    assert 'stopped without saving non-finite weights' in message
    assert f'last checkpoint: {tmp_path / "work" / "epoch_1.pth"}' in message
    assert_only_finite_checkpoints(str(tmp_path / 'work'))


@pytest.mark.slow
def test_deferred_reads_name_the_same_first_iteration(tmp_path):
    """With reads only every 100 iterations (the GPU mode) the error comes at the epoch end
    (before the checkpoint) and names the same first bad iteration as reading every step."""
    iterations = []
    for read_every_iter in (True, False):
        work = tmp_path / str(read_every_iter)
        cfg = tiny_method_cfg('dino', work)
        cfg.optim_wrapper.optimizer.lr = 1e6
        # a non-zero first lr (the demo warm-up starts at 0): diverge before the epoch end
        cfg.param_scheduler[0].start_factor = 1e-3
        cfg.default_hooks.divergence = dict(type='DivergenceGuardHook', check_interval=100,
                                            read_every_iter=read_every_iter)
        seen = []
        runner = Runner.from_cfg(cfg)
        runner.register_hook(_Iterations(seen), priority=10)
        with pytest.raises(FloatingPointError) as excinfo:
            runner.train()
        iterations.append((int(DIVERGED.match(str(excinfo.value)).group(1)), seen[-1]))
        assert_only_finite_checkpoints(str(work))
    (eager_bad, eager_last), (deferred_bad, deferred_last) = iterations
    assert eager_bad == deferred_bad
    assert eager_last == eager_bad  # stopped at once
    assert deferred_last == 4 and deferred_last > deferred_bad  # ran to the end of epoch 2


class _Iterations(Hook):
    def __init__(self, seen):
        self.seen = seen

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen.append(runner.iter + 1)


class _PoisonWeights(Hook):
    """Puts an infinity in one student weight after the loss of the epoch's last step was
    checked (between the guard, priority 80, and CheckpointHook, 90)."""
    priority = 85

    def after_train_epoch(self, runner):
        runner.model.backbone.cls_token.data.fill_(float('inf'))


def test_no_checkpoint_of_nonfinite_weights(tmp_path):
    runner = Runner.from_cfg(tiny_dino_cfg(tmp_path, epochs=2))
    runner.register_hook(_PoisonWeights())
    with pytest.raises(FloatingPointError, match=r'^refusing to save a checkpoint at iteration '
                       r'2: 1 of \d+ weight tensors are non-finite \(backbone\.cls_token\); '
                       r'last checkpoint: none$'):
        runner.train()
    assert glob.glob(str(tmp_path / '*.pth')) == []
    assert not osp.exists(tmp_path / 'last_checkpoint')


def test_nonfinite_tensors_names_nan_and_inf_only():
    state = {'a': torch.tensor([1.0, float('nan')]), 'b': torch.ones(3),
             'c': torch.tensor([float('-inf')]), 'steps': torch.tensor(7)}
    assert nonfinite_tensors(state) == ['a', 'c']


# ----------------------------------------------------------------------------- no host sync
class _CountReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


class _CountingGuard(DivergenceGuardHook):
    """The guard with its per-step entry points run under a read counter."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reads_per_iter = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._mode = _CountReads()
        with self._mode:
            super().before_train_iter(runner, batch_idx, data_batch)

    def _record_grads(self, optimizer, args, kwargs):
        with self._mode:
            super()._record_grads(optimizer, args, kwargs)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with self._mode:
            super().after_train_iter(runner, batch_idx, data_batch, outputs)
        self.reads_per_iter.append((batch_idx, self._mode.reads))


def test_per_step_path_reads_nothing_from_the_device(tmp_path):
    cfg = tiny_dino_cfg(tmp_path, epochs=2, num_train=48)  # 3 iterations per epoch
    cfg.default_hooks.pop('divergence')
    runner = Runner.from_cfg(cfg)
    guard = _CountingGuard(check_interval=100, read_every_iter=False)
    runner.register_hook(guard)
    runner.train()
    assert [i for i, _ in guard.reads_per_iter] == [0, 1, 2, 0, 1, 2]
    for batch_idx, reads in guard.reads_per_iter:
        if batch_idx < 2:
            assert reads == 0
        else:  # the epoch's last step reads the record before the checkpoint: counted
            assert reads >= 1


# ----------------------------------------------------------------------------- loss scaler
class _ScaledToy(BaseModel):
    """loss = sum(w * x): a batch holding an infinity gives infinite gradients."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=(self.w * inputs).sum())


def toy_batches(bad):
    data = torch.ones(len(bad), 1, 4)
    for i, is_bad in enumerate(bad):
        if is_bad:
            data[i, 0, 0] = float('inf')
    return [dict(inputs=x) for x in data]


def run_scaled_toy(tmp_path, bad, max_skipped_steps, fused=False, **guard):
    """fused: the optimiser skips the update itself (its step and the guard's gradient
    pre-hook run on every iteration, overflow or not)."""
    from mmselfsup_vmf.engine.optimizers import AmpDistillOptimWrapper
    model = _ScaledToy()
    wrapper = AmpDistillOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1, fused=fused),
                                     dtype='bfloat16')
    # a real, enabled dynamic loss scaler (as fp16 on a GPU), growth out of reach
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=16.0, growth_interval=10**6)
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=torch.utils.data.DataLoader(toy_batches(bad), batch_size=None),
        optim_wrapper=wrapper, train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(checkpoint=None, sampler_seed=None, divergence=dict(
            type='DivergenceGuardHook', max_skipped_steps=max_skipped_steps, **guard)),
        default_scope='mmpretrain')
    runner.train()
    return model, wrapper


@pytest.mark.parametrize('fused', [False, True])
def test_loss_scaler_skips_are_tolerated_up_to_the_limit(tmp_path, fused):
    # two runs of 3 skipped steps with a good one between: no error, 2 real SGD steps
    model, wrapper = run_scaled_toy(tmp_path / 'a', [0, 1, 1, 1, 0, 1, 1, 1], 3, fused)
    assert wrapper.loss_scaler.get_scale() == 16.0 / 2 ** 6
    torch.testing.assert_close(model.w.detach(), torch.full((4,), 1 - 2 * 0.1))


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('read_every_iter', [True, False])
def test_too_many_consecutive_skips_stop_training(tmp_path, fused, read_every_iter):
    # read_every_iter=False: the count is kept on the device and read at the epoch's end
    # (iteration 6); the message still names iteration 5
    with pytest.raises(FloatingPointError) as excinfo:
        run_scaled_toy(tmp_path / 'b', [0, 1, 1, 1, 1, 0], 3, fused,
                       read_every_iter=read_every_iter, check_interval=100)
    assert str(excinfo.value) == (
        'training diverged: the loss scaler skipped 4 consecutive steps up to iteration 5 '
        '(non-finite gradients; loss scale now 1); no checkpoint was written after it '
        '(limit: DivergenceGuardHook max_skipped_steps=3)')


class _ProbeToy(_ScaledToy):
    """Adds a logged term outside the graph: NaN where the batch says so, while the
    gradients (and so the scaler) stay finite."""

    def forward(self, inputs, probe=None, data_samples=None, mode='loss'):
        return dict(loss=(self.w * inputs).sum(), loss_probe=probe)


@pytest.mark.parametrize('fused', [False, True])
def test_a_nonfinite_term_on_an_applied_step_is_an_error(tmp_path, fused):
    """Only the scaler's own overflow flag excuses a step: a NaN term on a step it applied
    stops training, with a fused optimiser too."""
    from mmselfsup_vmf.engine.optimizers import AmpDistillOptimWrapper
    model = _ProbeToy()
    wrapper = AmpDistillOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1, fused=fused),
                                     dtype='bfloat16')
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=16.0, growth_interval=10**6)
    batches = [dict(inputs=torch.ones(4), probe=torch.tensor(float('nan') if i == 2 else 0.))
               for i in range(4)]
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=torch.utils.data.DataLoader(batches, batch_size=None),
        optim_wrapper=wrapper, train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(checkpoint=None, sampler_seed=None, divergence=dict(
            type='DivergenceGuardHook', read_every_iter=False, check_interval=100)),
        default_scope='mmpretrain')
    with pytest.raises(FloatingPointError, match=r'^training diverged at iteration 3: '
                       r'non-finite loss_probe=nan'):
        runner.train()
    assert wrapper.loss_scaler.get_scale() == 16.0  # no step was skipped


def test_plain_wrapper_stops_at_the_first_nonfinite_loss(tmp_path):
    """Without a loss scaler a non-finite step would corrupt the weights: no tolerance."""
    model = _ScaledToy()
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=torch.utils.data.DataLoader(toy_batches([0, 0, 1, 0]),
                                                     batch_size=None),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(checkpoint=None, sampler_seed=None,
                           divergence=dict(type='DivergenceGuardHook')),
        default_scope='mmpretrain')
    with pytest.raises(FloatingPointError, match=r'^training diverged at iteration 3: '
                       r'non-finite loss=inf; non-finite gradient of 1 parameters \(w\)'):
        runner.train()


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize('config', sorted(
    glob.glob(osp.join(ROOT, 'configs', '*', 'demo_fashion-mnist.py'))
    + glob.glob(osp.join(ROOT, 'configs', '*', 'vit-*.py'))
    + [osp.join(ROOT, 'configs', 'examples', 'mmpretrain_mix_simdino.py')]))
def test_every_pretraining_config_has_the_guard_hooks(config):
    hooks = Config.fromfile(config).default_hooks
    assert hooks.divergence.type == 'DivergenceGuardHook'
    assert hooks.unreadable_samples.type == 'UnreadableSampleHook'
