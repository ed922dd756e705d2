"""A whole Runner iteration reads nothing on the host except at the logger's interval.

Each method's demo config (its default and custom hooks: RuntimeInfoHook, LoggerHook,
ParamSchedulerHook, CheckpointHook, TrainProgressHook, DivergenceGuardHook, StopOnSignalHook,
FreezeLastLayerHook, RandomStateHook, PrototypeMonitorHook for the vMF methods; the teacher
EMA and the optimiser wrapper's clipping) is trained by mmengine's Runner on a tiny dataset,
with the value checks configured as on an accelerator (``numerics.HOST_CHECK_DEVICES`` empty:
the hooks then use their accelerator intervals). From the first hook's ``before_train_iter``
to the last hook's ``after_train_iter`` every host read (``.item()``, data-dependent shapes,
blocking copies of Python data; the dispatch counter of test_step_static.py) is counted per
iteration. Not counted, as in test_step_static.py: the data preprocessor (it brings the
batch and its masks to the device) and reads of torch's host-side optimiser step counters
(free on every device). Iterations that do not log must read nothing; a logging iteration
may read. This holds in fp32 (the demo configs' precision) and in fp16 with the ImageNet
recipes' optimiser (dynamic loss scaling, fused AdamW: the scaler hands its overflow flag to
the optimiser instead of reading it; DivergenceGuardHook counts skipped steps on the device).
With a non-fused optimiser, torch's GradScaler reads that flag before every step.
With ``device_crops`` (crops on the data preprocessor's device), the data preprocessor is
counted too: it crops and augments from the loader's packed parameters without a read.
"""
import inspect
import os.path as osp
import sys
import traceback
from collections import Counter

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmselfsup_vmf.datasets.transforms.device_multicrop import use_device_crops
from mmselfsup_vmf.models.losses import numerics

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(TESTS, 'models', 'algorithms'))
sys.path.insert(0, osp.join(TESTS, 'engine'))
from test_amp_fp16_cpu import METHODS  # noqa: E402
from test_step_static import CountHostReads  # noqa: E402
from tiny_dino_cfg import tiny_method_cfg  # noqa: E402

BATCH, ITERS, LOG_INTERVAL = 8, 6, 3
# the line of torch's GradScaler._maybe_opt_step that reads the overflow flag
SCALER_READ_LINE = next(
    i for i, line in enumerate(inspect.getsourcelines(torch.amp.GradScaler._maybe_opt_step)[0],
                               inspect.getsourcelines(torch.amp.GradScaler._maybe_opt_step)[1])
    if '.item()' in line)
FP16_METHODS = ['dino', 'ibot_vmf', 'simdino']


class WhereReads(CountHostReads):
    """Each read with the innermost project / mmengine line that caused it."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = len(self.reads)
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if len(self.reads) > before:
            frames = [f for f in traceback.extract_stack()
                      if any(part in f.filename for part in ('mmselfsup_vmf', 'mmengine',
                                                              'grad_scaler'))]
            where = f'{osp.basename(frames[-1].filename)}:{frames[-1].lineno}' if frames else '?'
            self.reads[-1] = f'{self.reads[-1]} at {where}'
        return out


class OpenCount(Hook):
    """First hook of an iteration: starts counting (the optimiser's host step counters are
    known by then)."""

    priority = 'HIGHEST'

    def __init__(self, reads, count_preprocessor=False):
        self.reads, self.counter = reads, None
        self.count_preprocessor = count_preprocessor

    def before_train(self, runner):
        if self.count_preprocessor:
            return
        # the data preprocessor's copies of the batch are the loader's part (not counted)
        pre = runner.model.data_preprocessor
        pre.register_forward_pre_hook(lambda *args: setattr(self.counter, 'closed', True))
        pre.register_forward_hook(lambda *args: setattr(self.counter, 'closed', False))

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        optimizer = runner.optim_wrapper.optimizer
        steps = [s['step'] for s in optimizer.state.values()
                 if isinstance(s.get('step'), torch.Tensor)]
        self.counter = WhereReads(steps)
        self.counter.__enter__()


class CloseCount(Hook):
    priority = 'LOWEST'

    def __init__(self, opener):
        self.opener = opener

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        counter = self.opener.counter
        counter.__exit__(None, None, None)
        self.opener.reads.append(counter.reads)


def silent_reads(method, tmp_path, monkeypatch, fp16=False, fused=True, device_crops=False):
    """Host reads per iteration that does not log, by kind and place."""
    monkeypatch.setattr(numerics, 'HOST_CHECK_DEVICES', set())
    cfg = tiny_method_cfg(method, tmp_path, num_train=BATCH * ITERS, batch=BATCH)
    if device_crops:  # 'cpu': the switch's laws and preprocessor, run here on the CPU
        cfg.device_crops = 'cpu'
        use_device_crops(cfg)
    if fp16:  # the ImageNet recipes' precision (all but SimDINOv2's bf16)
        cfg.optim_wrapper.update(type='AmpDistillOptimWrapper', dtype='float16',
                                 loss_scale='dynamic')
        cfg.optim_wrapper.optimizer.fused = fused
    cfg.default_hooks.logger.interval = LOG_INTERVAL
    cfg.train_cfg.max_epochs = 1
    if 'prototype_monitor' in cfg.default_hooks:  # the recipes' logger interval (the demos
        cfg.default_hooks.prototype_monitor.interval = None  # plot every iteration on a CPU)
    runner = Runner.from_cfg(cfg)
    reads = []
    opener = OpenCount(reads, count_preprocessor=device_crops)
    runner.register_hook(opener)
    runner.register_hook(CloseCount(opener))
    runner.train()
    assert len(reads) == ITERS
    logging = [(i + 1) % LOG_INTERVAL == 0 for i in range(ITERS)]
    # the counter does see the logging iterations' reads (the logged values)
    assert all(reads[i] for i in range(ITERS) if logging[i]), reads
    # iteration 0 is left out: its optimiser step creates torch's host-side step counters
    return {i: dict(Counter(r)) for i, r in enumerate(reads) if i > 0 and not logging[i]}


@pytest.mark.parametrize('method', METHODS)
def test_only_logging_iterations_read_the_device(method, tmp_path, monkeypatch):
    silent = {i: r for i, r in silent_reads(method, tmp_path, monkeypatch).items() if r}
    assert not silent, '\n'.join(f'iteration {i}: {r}' for i, r in silent.items())


@pytest.mark.parametrize('method', METHODS)
def test_device_crops_iterations_read_nothing_outside_logging(method, tmp_path, monkeypatch):
    """The whole iteration, the data preprocessor's crops, colour operations and masks
    included."""
    silent = {i: r for i, r in silent_reads(method, tmp_path, monkeypatch,
                                            device_crops=True).items() if r}
    assert not silent, '\n'.join(f'iteration {i}: {r}' for i, r in silent.items())


@pytest.mark.parametrize('method', FP16_METHODS)
def test_fp16_with_fused_adamw_reads_nothing_outside_logging(method, tmp_path, monkeypatch):
    silent = silent_reads(method, tmp_path, monkeypatch, fp16=True)
    assert not any(silent.values()), silent


def test_fp16_without_fusion_reads_the_overflow_flag_once_per_step(tmp_path, monkeypatch):
    """The counter sees the read that fusion removes: torch's GradScaler reads its overflow
    flag before each step of a non-fused optimiser; nothing else reads."""
    silent = silent_reads(FP16_METHODS[0], tmp_path, monkeypatch, fp16=True, fused=False)
    assert silent
    for reads in silent.values():
        assert list(reads) == ['aten::_local_scalar_dense at grad_scaler.py:'
                               + str(SCALER_READ_LINE)] and sum(reads.values()) == 1, silent


def logged_history(method, work_dir, runtime_info):
    cfg = tiny_method_cfg(method, work_dir, num_train=BATCH * ITERS, batch=BATCH)
    cfg.default_hooks.logger.interval = LOG_INTERVAL
    cfg.default_hooks.runtime_info.type = runtime_info
    cfg.train_cfg.max_epochs = 1
    runner = Runner.from_cfg(cfg)
    runner.train()
    scalars = runner.message_hub.log_scalars
    return {k: scalars[k].data[0].tolist() for k in scalars if k.startswith('train/')}


def test_deferred_reads_log_what_mmengines_hook_logs(tmp_path, monkeypatch):
    """Same run, mmengine's RuntimeInfoHook (reads every iteration) against the deferred one
    as on an accelerator: every message-hub history, grad norm included, is the same."""
    reference = logged_history('dino_vmf', tmp_path / 'a', 'RuntimeInfoHook')
    monkeypatch.setattr(numerics, 'HOST_CHECK_DEVICES', set())
    deferred = logged_history('dino_vmf', tmp_path / 'b', 'LoggedRuntimeInfoHook')
    assert {'train/loss', 'train/loss_dino', 'train/grad_norm_max'} <= set(reference)
    assert len(reference['train/loss']) == ITERS
    assert deferred.keys() == reference.keys()
    for key, values in reference.items():
        if 'time' not in key:  # wall-clock times differ between runs
            assert deferred[key] == values, key
