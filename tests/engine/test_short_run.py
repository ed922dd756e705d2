"""``tools/train.py --epochs E --epoch-iters N``: every schedule follows the shortened run.

The lr and weight decay are read from the optimiser that mmengine's real schedulers drive, the
teacher temperature from ``model.schedule_values()`` and the EMA weight from what the teacher
actually did to its parameters; the expectations are DINO's formulas evaluated by hand on the
new length (float64).
"""
import math

import pytest
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from testing_utils import ROOT, load_tool

from mmselfsup_vmf.engine.short_run import shorten_run

DINO_DEMO = f'{ROOT}/configs/dino/demo_fashion-mnist.py'


class Recorder(Hook):
    """Per iteration: lr / wd of the decayed group, teacher temperature, EMA update weight."""

    priority = 'NORMAL'  # after TrainProgressHook, before ParamSchedulerHook steps

    def __init__(self):
        self.rows = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        group = max(runner.optim_wrapper.param_groups, key=lambda g: g['weight_decay'])
        self.param = model.backbone.patch_embed.projection.weight
        self.teacher_param = model.teacher.module.backbone.patch_embed.projection.weight
        self.before = (self.teacher_param.detach().double().clone(),
                       self.param.detach().double().clone())
        self.rows.append(dict(lr=group['lr'], wd=group['weight_decay'],
                              temp=model.schedule_values()['teacher_temp'],
                              max_iters=model.teacher.max_iters))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        teacher_before, student_before = self.before
        diff = student_before - teacher_before
        big = diff.abs() >= 0.5 * diff.abs().max()
        moved = self.teacher_param.detach().double() - teacher_before
        self.rows[-1]['ema_weight'] = (moved[big] / diff[big]).median().item()


def test_cli_shortens_every_schedule_consistently(tmp_path):
    train = load_tool('tools/train.py', 'train_tool')
    args = train.parse_args([DINO_DEMO, '--epochs', '2', '--epoch-iters', '3',
                             '--work-dir', str(tmp_path), '--cfg-options',
                             'model.teacher_temp.end=0.07', 'model.teacher_temp.warmup_epochs=3'])
    cfg = train.merge_args(Config.fromfile(DINO_DEMO), args)
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h.type != 'KNNHook']  # speed only
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    recorder = Recorder()
    runner.register_hook(recorder)
    runner.train()
    rows = recorder.rows
    assert runner.iter == len(rows) == 6  # 2 epochs x 3 iterations

    base_lr, wd0, eta_min, w0 = 1e-3, 0.04, 1e-5, 1 - 0.99
    # 3-epoch schedule compressed to 6 iterations: warm-up 1/3 of the run = iterations 0-1,
    # then the cosine over iterations 2-5; the weight-decay cosine spans all 6
    # (np.linspace(0, peak, 2) as DINO's warm-up: exactly 0, then the peak)
    warmup = [0.0, base_lr]
    cosine = [eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * i / 4)) / 2
              for i in range(4)]
    expected_lr = warmup + cosine
    expected_wd = [wd0 * (10 + (1 - 10) * (1 + math.cos(math.pi * i / 6)) / 2) for i in range(6)]
    # warm-up 3 of 3 epochs -> 2 of 2: np.linspace(0.04, 0.07, 2)[epoch]
    expected_temp = [0.04] * 3 + [0.07] * 3
    # DINO's momentum cosine over the 6 real iterations; the first update copies the student
    expected_ema = [None] + [w0 * (1 + math.cos(math.pi * (t - 1) / 6)) / 2 for t in range(1, 6)]
    for t, row in enumerate(rows):
        assert row['lr'] == pytest.approx(expected_lr[t], rel=1e-6), t
        assert row['wd'] == pytest.approx(expected_wd[t], rel=1e-6), t
        assert row['temp'] == pytest.approx(expected_temp[t]), t
        assert row['max_iters'] == 6
        if t >= 2:  # after iteration 0 (lr 0) student - teacher is below float32 resolution
            assert row['ema_weight'] == pytest.approx(expected_ema[t], rel=2e-3), t


def test_epochs_only_scales_the_published_recipe():
    cfg = shorten_run(Config.fromfile(f'{ROOT}/configs/ibot/vit-s16_8xb64.py'), epochs=80)
    warmup, cosine, wd = cfg.param_scheduler
    assert cfg.train_cfg.max_epochs == 80
    assert (warmup.begin, warmup.end) == (0, 1.0)  # 10 of 800 epochs
    assert (cosine.begin, cosine.end, cosine.T_max) == (1.0, 80.0, 79.0)
    assert (wd.begin, wd.end) == (0, 80.0)
    assert all(s.convert_to_iter_based for s in cfg.param_scheduler)
    assert cfg.model.teacher_temp.warmup_epochs == 3  # 30 of 800
    assert cfg.model.teacher_patch_temp.warmup_epochs == 3


def test_validation_and_hook_intervals_are_capped():
    probe = f'{ROOT}/configs/benchmarks/linear_probe/' \
        'dino-demo-vit-p7_linear_1xb256-coslr-10e_fashion-mnist.py'
    cfg = shorten_run(Config.fromfile(probe), epochs=2)
    assert cfg.train_cfg.val_interval == 2  # was 10: the shortened run still validates
    (cosine,) = cfg.param_scheduler
    assert (cosine.T_max, cosine.end) == (2.0, 2.0)
    demo = shorten_run(Config.fromfile(DINO_DEMO), epochs=1)
    knn = [h for h in demo.custom_hooks if h.type == 'KNNHook']
    assert knn[0].interval == 1 and demo.default_hooks.checkpoint.interval == 1


def test_only_epoch_based_loops_are_shortened():
    cfg = Config(dict(train_cfg=dict(type='IterBasedTrainLoop', max_iters=100)))
    with pytest.raises(ValueError, match='epoch-based train_cfg'):
        shorten_run(cfg, epochs=1)
    with pytest.raises(ValueError, match='--epoch-iters must be >= 1'):
        shorten_run(Config(dict(train_cfg=dict(max_epochs=3))), epoch_iters=0)
