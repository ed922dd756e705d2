"""Schedules against closed forms (docs/methods.md#dino-and-ibot-recipes).

- teacher temperature: ``np.linspace(start, end, W)`` per epoch, then ``end``;
- LR and weight decay: the real mmengine schedulers of
  ``configs/_base_/schedules/adamw_coslr_coswd.py`` (epochs shrunk), stepped per iteration in a
  real Runner, against DINO's ``cosine_scheduler`` closed forms, with the linear scaling rule;
- teacher momentum: the EMA teacher after k training steps against the closed-form DINO
  recursion with m(t) = 1 - (1 - m0)(1 + cos(pi t / T)) / 2.
"""
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

from mmselfsup_vmf.models.heads import DINOHead
from mmselfsup_vmf.models.utils import teacher_temperature

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
BASE_SCHEDULE = osp.join(ROOT, 'configs', '_base_', 'schedules', 'adamw_coslr_coswd.py')


# ----------------------------------------------------------------------------- temperature
@pytest.mark.parametrize('warmup', [0, 1, 2, 5, 30])
def test_teacher_temperature_is_dino_linspace(warmup):
    start, end = 0.04, 0.07
    expected = np.concatenate((np.linspace(start, end, warmup), np.ones(40) * end))
    got = [teacher_temperature(e, warmup, start, end) for e in range(warmup + 5)]
    np.testing.assert_allclose(got, expected[:warmup + 5], rtol=0, atol=1e-15)
    if warmup == 1:
        assert got[:2] == [start, end]
    with pytest.raises(ValueError, match='epoch'):
        teacher_temperature(-1, warmup, start, end)


TINY_VIT = dict(type='VisionTransformer', img_size=16, patch_size=8, out_type='cls_token',
                arch=dict(embed_dims=24, num_layers=1, num_heads=2, feedforward_channels=48))


def tiny_dino(**kwargs):
    cfg = dict(type='DINO', backbone=TINY_VIT,
               head=dict(type='DINOHead', in_channels=24, hidden_channels=32,
                         bottleneck_channels=16, num_prototypes=32, norm_last_layer=False),
               loss=dict(type='DINOLoss', num_prototypes=32, dim=16))
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def test_teacher_temperature_follows_the_train_progress():
    """The epoch reaches the model through set_train_progress (TrainProgressHook in a run;
    tests/integration/test_train_e2e.py checks the hook in a real Runner)."""
    model = tiny_dino(teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=4))
    expected = np.linspace(0.04, 0.07, 4)
    assert model.schedule_values() == dict(teacher_temp=0.04)  # before any progress
    for epoch in range(6):
        model.set_train_progress(epoch=epoch, iteration=10 * epoch, max_iters=60)
        want = expected[epoch] if epoch < 4 else 0.07
        assert model.schedule_values()['teacher_temp'] == pytest.approx(want, abs=1e-15)
        assert model.teacher.max_iters == 60


# ----------------------------------------------------------------------------- momentum
def dino_momentum(t, total, m0):
    return 1 - (1 - m0) * (1 + math.cos(math.pi * t / total)) / 2


def test_teacher_ema_matches_closed_form_dino_recursion():
    """Student perturbed between training steps (as an optimiser would); the teacher used
    in step t must be DINO's teacher after its update at the end of step t-1:
    theta_t = m(t-1) theta_{t-1} + (1 - m(t-1)) student_t, theta_0 = student_0."""
    total, m0 = 6, 0.6  # a small m0 makes any off-by-one in t clearly visible
    model = tiny_dino(teacher_momentum=m0)
    model.train()
    model.set_train_progress(epoch=0, iteration=0, max_iters=total)
    names = [n for n, _ in model.teacher.module.named_parameters()]
    student = dict(model._student_modules().named_parameters())
    teacher = dict(model.teacher.module.named_parameters())
    expected = {n: student[n].detach().double().numpy().copy() for n in names}
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(2, 3, 16, 16, generator=gen) for _ in range(2)]
    for t in range(total):
        model.loss(views, [])  # updates the teacher first, as a training step does
        if t > 0:
            m = dino_momentum(t - 1, total, m0)
            expected = {n: m * expected[n] + (1 - m) * student[n].detach().double().numpy()
                        for n in names}
        for n in names:
            np.testing.assert_allclose(teacher[n].detach().double().numpy(), expected[n],
                                       rtol=1e-5, atol=1e-6, err_msg=f'{n} at step {t}')
        with torch.no_grad():  # stand-in for the optimiser step of iteration t
            for p in student.values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    # momentum reaches 1 at the end: m(T) = 1
    assert dino_momentum(total, total, m0) == 1.0


def test_teacher_not_updated_outside_training():
    model = tiny_dino(teacher_momentum=0.5)
    model.set_train_progress(epoch=0, iteration=0, max_iters=10)
    model.train()
    views = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    model.loss(views, [])  # first step: teacher = student
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.eval()
    model.loss(views, [])
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- LR and WD
@MODELS.register_module(name='_ScheduleTestModel', force=True)
class _ScheduleTestModel(BaseModel):
    """A DINO head on flattened 8x8 digits: 2-D weights, biases, a LayerNorm and the
    prototype layer's g of shape (K, 1) (2-D, so decayed as in DINO)."""

    def __init__(self):
        super().__init__(data_preprocessor=dict(type='ImgDataPreprocessor'))
        self.norm = torch.nn.LayerNorm(192)
        self.head = DINOHead(in_channels=192, hidden_channels=16, bottleneck_channels=8,
                             num_prototypes=4, norm_last_layer=False)

    def forward(self, inputs, data_samples=None, mode='loss'):
        return {'loss': self.head(self.norm(inputs.flatten(1) / 255)).pow(2).mean()}


class _RecordHook(Hook):
    priority = 'VERY_LOW'

    def __init__(self):
        self.lr, self.wd = [], []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        groups = runner.optim_wrapper.optimizer.param_groups
        self.lr.append([g['lr'] for g in groups])
        self.wd.append([g['weight_decay'] for g in groups])


def shrunk_schedule(epochs, warmup):
    """The base schedule file with its epoch boundaries mapped to (epochs, warmup)."""
    cfg = Config.fromfile(BASE_SCHEDULE)
    boundary = {0: 0, cfg.warmup_epochs: warmup, cfg.max_epochs: epochs}
    for s in cfg.param_scheduler:
        if 'T_max' in s:
            assert s.T_max == s.end - s.begin  # cosine over its whole window
            s.T_max = boundary[s.end] - boundary[s.begin]
        s.begin, s.end = boundary[s.begin], boundary[s.end]
    cfg.train_cfg.max_epochs = epochs
    return cfg


def test_lr_and_weight_decay_from_the_base_schedule_in_a_runner(tmp_path):
    epochs, warmup, batch, num_train = 5, 2, 64, 256
    cfg = shrunk_schedule(epochs, warmup)
    record = _RecordHook()
    runner = Runner(
        model=dict(type='_ScheduleTestModel'),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            batch_size=batch, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(type='SklearnDigits', image_size=8, num_train=num_train,
                         pipeline=[dict(type='PackInputs')])),
        train_cfg=cfg.train_cfg,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.param_scheduler,
        auto_scale_lr=cfg.auto_scale_lr,
        custom_hooks=[record],
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=100)),
        default_scope='mmpretrain',
        randomness=dict(seed=0))
    runner.train()

    n = num_train // batch
    its = np.arange(epochs * n)
    # linear scaling rule: lr = base_lr * total_batch / 256 (one process here)
    peak = cfg.optim_wrapper.optimizer.lr * batch / 256
    start_factor, min_lr = cfg.param_scheduler[0].start_factor, cfg.param_scheduler[1].eta_min
    w = warmup * n
    # DINO: linspace(~0, peak, w) over the warm-up iterations, then cosine to min_lr
    lr = np.where(
        its < w, peak * (start_factor + (1 - start_factor) * its / (w - 1)),
        min_lr + 0.5 * (peak - min_lr) * (1 + np.cos(np.pi * (its - w) / (len(its) - w))))
    wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * its / len(its)))

    got_lr, got_wd = np.array(record.lr), np.array(record.wd)
    assert got_lr.shape[0] == len(its)
    for g in range(got_lr.shape[1]):  # every group gets the same lr
        np.testing.assert_allclose(got_lr[:, g], lr, rtol=1e-9, atol=1e-15)
    assert got_lr.max() == pytest.approx(peak, rel=1e-9)

    # which parameters are decayed: 2-D weights and g (K, 1); not biases / norms / 1-D
    groups = runner.optim_wrapper.optimizer.param_groups
    names = {id(p): n for n, p in runner.model.named_parameters()}
    decayed = {names[id(p)] for gi, g in enumerate(groups) if got_wd[0, gi] > 0
               for p in g['params']}
    assert decayed == {'head.mlp.0.weight', 'head.mlp.2.weight', 'head.mlp.4.weight',
                       'head.last_layer.parametrizations.weight.original0',
                       'head.last_layer.parametrizations.weight.original1'}
    for gi in range(len(groups)):
        if got_wd[0, gi] > 0:
            np.testing.assert_allclose(got_wd[:, gi], wd, rtol=1e-9, atol=1e-15)
        else:
            assert np.all(got_wd[:, gi] == 0.0)
    assert got_wd[-1].max() == pytest.approx(wd[-1]) and wd[-1] > 0.39
