"""A few DINO training iterations end to end through a real mmengine Runner on scikit-learn
digits: a tiny ViT through ``tools/train.py`` and mmpretrain's ResNet-18 (narrow) + a pooling
neck through ``Runner.from_cfg``. Loss finite, checkpoints written (with teacher, centre and
RNG states), the teacher moved away from its initialisation."""
import glob
import importlib.util
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from tiny_dino_cfg import ROOT, tiny_dino_cfg


def load_train_tool():
    spec = importlib.util.spec_from_file_location('train_tool',
                                                  osp.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Record(Hook):
    """Losses and the scheduled teacher temperature of every iteration, and the teacher
    state before training."""
    priority = 'LOWEST'

    def __init__(self):
        self.losses, self.teacher0, self.temps = [], None, []

    def before_train(self, runner):
        self.teacher0 = {k: v.clone() for k, v in
                         runner.model.teacher.module.state_dict().items()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append({k: float(v.detach()) for k, v in outputs.items()})
        model = runner.model
        self.temps.append((runner.epoch, model.schedule_values()['teacher_temp'],
                           model.teacher.max_iters))


def check_run(runner, record, work_dir, epochs, iters_per_epoch):
    model = runner.model
    assert len(record.losses) == epochs * iters_per_epoch
    for row in record.losses:
        assert torch.isfinite(torch.tensor(row['loss']))
        assert 0 < row['loss_dino'] < 2 * torch.log(torch.tensor(64.0))
    assert runner.iter == epochs * iters_per_epoch
    # TrainProgressHook (in the base runtime's default_hooks) gave the model the epoch and
    # the run length: teacher_temp = linspace(0.04, 0.07, 2)[epoch], then 0.07
    for epoch, temp, max_iters in record.temps:
        assert temp == (0.04 if epoch == 0 else 0.07)
        assert max_iters == epochs * iters_per_epoch
    # the teacher moved (EMA of a student that trained), and is still frozen
    moved = [k for k, v in model.teacher.module.state_dict().items()
             if not torch.equal(v, record.teacher0[k])]
    assert len(moved) > 0.5 * len(record.teacher0)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # checkpoints every epoch (the demo runtime keeps the last 2), with the teacher, the
    # centre and the RNG states
    ckpts = sorted(osp.basename(c) for c in glob.glob(osp.join(work_dir, 'epoch_*.pth')))
    assert ckpts == [f'epoch_{epochs - 1}.pth', f'epoch_{epochs}.pth']
    assert osp.isfile(osp.join(work_dir, 'last_checkpoint'))
    ckpt = torch.load(osp.join(work_dir, f'epoch_{epochs}.pth'), map_location='cpu',
                      weights_only=False)
    state = ckpt['state_dict']
    assert 'loss_module.center.center' in state
    assert state['loss_module.center.center'].abs().sum() > 0  # the centre was updated
    assert any(k.startswith('teacher.module.backbone.') for k in state)
    assert state['teacher.steps'].item() == epochs * iters_per_epoch
    assert 'random_state' in ckpt and 'optimizer' in ckpt and 'param_schedulers' in ckpt
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def test_vit_through_tools_train(tmp_path):
    cfg = tiny_dino_cfg(tmp_path / 'unused', backbone='vit')
    cfg_path = str(tmp_path / 'tiny_dino.py')
    cfg.dump(cfg_path)
    train_tool = load_train_tool()
    work_dir = str(tmp_path / 'work')
    record = _Record()
    # tools/train.py builds and trains; register the recorder between the two steps
    args = train_tool.parse_args([cfg_path, '--work-dir', work_dir,
                                  '--cfg-options', 'train_cfg.max_epochs=3'])
    runner = Runner.from_cfg(train_tool.merge_args(
        train_tool.Config.fromfile(cfg_path), args))
    train_tool.add_checkpoint_check(runner)
    runner.register_hook(record)
    runner.train()
    check_run(runner, record, work_dir, epochs=3, iters_per_epoch=2)
    assert runner.cfg.work_dir == work_dir
    # and the tool's main() runs the same config end to end on its own, here with --amp
    # (fp16 autocast with dynamic loss scaling, also on a CPU; fp32 loss maths)
    main_runner = train_tool.main([cfg_path, '--work-dir', str(tmp_path / 'main'), '--amp',
                                   '--cfg-options', 'train_cfg.max_epochs=1'])
    assert main_runner.iter == 2
    assert osp.isfile(osp.join(tmp_path, 'main', 'epoch_1.pth'))
    wrapper = main_runner.optim_wrapper
    assert type(wrapper).__name__ == 'AmpDistillOptimWrapper'
    if not torch.cuda.is_available():
        assert wrapper.cast_dtype == torch.float16
        assert wrapper.optimizer.defaults['fused'] is True  # as the fp16 recipes
        assert 0 < main_runner.message_hub.get_scalar('train/loss_scale').current() <= 2 ** 16
        args = train_tool.parse_args([cfg_path, '--amp', '--amp-dtype', 'bfloat16'])
        bf16 = train_tool.merge_args(train_tool.Config.fromfile(cfg_path), args).optim_wrapper
        assert bf16.dtype == 'bfloat16' and 'fused' not in bf16.optimizer
    assert torch.isfinite(torch.tensor(main_runner.message_hub.get_scalar('train/loss')
                                       .current()))
    assert all(torch.isfinite(p).all() for p in main_runner.model.parameters())


def test_resnet_with_pooling_neck(tmp_path):
    cfg = tiny_dino_cfg(tmp_path, backbone='resnet')
    runner = Runner.from_cfg(cfg)
    record = _Record()
    runner.register_hook(record)
    runner.train()
    assert type(runner.model.backbone).__name__ == 'ResNet'
    assert type(runner.model.teacher.module['neck']).__name__ == 'GlobalAveragePooling'
    check_run(runner, record, str(tmp_path), epochs=3, iters_per_epoch=2)
