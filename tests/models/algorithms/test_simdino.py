"""SimDINO: the algorithm's loss against an independent float64 evaluation of the official
semantics, the teacher/student wiring, clear errors, exact resume and (slow) the demo config
learning on the digits data."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from testing_utils import DEMO_TIMEOUT

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
DEMO = osp.join(REPO, 'configs', 'simdino', 'demo_fashion-mnist.py')
TINY_ARCH = dict(embed_dims=24, num_layers=2, num_heads=2, feedforward_channels=48)


def tiny_simdino(**loss_kwargs):
    cfg = dict(
        type='SimDINO',
        backbone=dict(type='VisionTransformer', arch=TINY_ARCH, img_size=16, patch_size=4,
                      out_type='cls_token'),
        head=dict(type='DINOHead', in_channels=24, hidden_channels=32, bottleneck_channels=8,
                  num_prototypes=None),
        loss=dict(type='SimDINOLoss', **loss_kwargs))
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def make_views(batch, num_local=2, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 3, 16, 16, generator=g, dtype=dtype) for _ in range(2)]
            + [torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype) for _ in range(num_local)])


def perturb_teacher(model, scale=0.05, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.teacher.module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------- independent reference
def official_simdino_loss(student, teacher, eps, expa_type, world_batch=None):
    """float64 numpy: MCRLoss of the official SimDINO (main_dino.py), one rank.

    student: list of V (m, d) arrays [global0, global1, locals...]; teacher: 2 (m, d).
    comp = mean over the 2V-2 pairs (g, v != g) of mean_b cos(t_g, s_v);
    R_g = sum log diag chol(I + d/(n eps) Z_g^T Z_g), Z_g = (s_g + t_g)/2 or s_g;
    expa = (d + n)/(d n) * mean_g R_g; loss = -comp - expa.
    """
    m, d = student[0].shape
    n = world_batch or m

    def cos(a, b):
        return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    pairs = [cos(teacher[g], student[v]).mean()
             for g in range(2) for v in range(len(student)) if v != g]
    comp = np.mean(pairs)
    rates = []
    for g in range(2):
        z = (student[g] + teacher[g]) / 2 if expa_type == 'mean' else student[g]
        a = np.eye(d) + d / (n * eps) * z.T @ z
        rates.append(np.sum(np.log(np.diag(np.linalg.cholesky(a)))))
    expa = (d + n) / (d * n) * np.mean(rates)
    return -comp - expa, comp, expa


def head_outputs(model, views):
    """Per-view head outputs, each view through the modules on its own (float64 numpy)."""
    with torch.no_grad():
        student = [model.head(model.backbone(v)[-1]) for v in views]
        t = model.teacher.module
        teacher = [t['head'](t['backbone'](v)[-1]) for v in views[:2]]
    return ([s.double().numpy() for s in student], [x.double().numpy() for x in teacher])


@pytest.mark.parametrize('expa_type', ['mean', 'student'])
def test_loss_equals_float64_official_semantics(expa_type):
    model = tiny_simdino(eps=0.05, expa_type=expa_type).double()
    perturb_teacher(model)
    model.train(False)  # no drop-path, no teacher update: the same modules as below
    views = make_views(batch=6, dtype=torch.float64)
    losses = model.loss(views, [DataSample() for _ in range(6)])
    student, teacher = head_outputs(model, views)
    ref_loss, ref_comp, ref_expa = official_simdino_loss(student, teacher, 0.05, expa_type)
    assert set(losses) == {'loss_comp', 'loss_expa', 'comp', 'expa', 'global_comp'}
    # logged only: the alignment over the two global-crop pairs (t_0, s_1), (t_1, s_0)
    np.testing.assert_allclose(losses['global_comp'].item(), np.mean([
        np.mean(np.sum(teacher[g] * student[1 - g], 1)
                / np.linalg.norm(teacher[g], axis=1) / np.linalg.norm(student[1 - g], axis=1))
        for g in range(2)]), rtol=1e-10)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert total.dtype == torch.float64
    np.testing.assert_allclose(total.item(), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(losses['comp'].item(), ref_comp, rtol=1e-10)
    np.testing.assert_allclose(losses['expa'].item(), ref_expa, rtol=1e-10)
    np.testing.assert_allclose(losses['loss_comp'].item(), -ref_comp, rtol=1e-10)


def test_float32_training_step_matches_reference_and_updates_only_the_student():
    """Train mode (drop-path off so the reference sees the same function): fp32 loss within
    fp32 accuracy; gradients reach the student, never the teacher."""
    model = tiny_simdino()
    perturb_teacher(model)
    model.train(True)
    model.set_train_progress(epoch=0, iteration=0, max_iters=10)
    views = make_views(batch=8)
    teacher_before = copy.deepcopy(model.teacher.module.state_dict())
    losses = model.loss(views, [DataSample() for _ in range(8)])
    # loss() updated the teacher first (EMA towards the student, update weight 1 - 0.996)
    moved = [not torch.equal(a, teacher_before[k])
             for k, a in model.teacher.module.state_dict().items()]
    assert any(moved)
    model.train(False)
    student, teacher = head_outputs(model, views)
    ref_loss, _, _ = official_simdino_loss(student, teacher, 0.05, 'mean')
    total = losses['loss_comp'] + losses['loss_expa']
    np.testing.assert_allclose(total.item(), ref_loss, rtol=2e-5)
    total.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert model.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_teacher_sees_only_global_views():
    model = tiny_simdino()
    seen = {'student': [], 'teacher': []}
    model.backbone.register_forward_pre_hook(
        lambda m, args: seen['student'].append(tuple(args[0].shape)))
    model.teacher.module['backbone'].register_forward_pre_hook(
        lambda m, args: seen['teacher'].append(tuple(args[0].shape)))
    model.train(False)
    model.loss(make_views(batch=4, num_local=3), [DataSample() for _ in range(4)])
    # consecutive same-size views run in one call: 2 globals, then 3 locals
    assert seen['teacher'] == [(8, 3, 16, 16)]
    assert seen['student'] == [(8, 3, 16, 16), (12, 3, 8, 8)]


def test_per_gpu_batch_of_one_is_a_clear_error():
    model = tiny_simdino()
    with pytest.raises(ValueError, match='at least 2 images per GPU.*batch of 1'):
        model.loss(make_views(batch=1), [DataSample()])


def test_prototype_head_or_mismatched_views_are_clear_errors():
    cfg = dict(type='SimDINO',
               backbone=dict(type='VisionTransformer', arch=TINY_ARCH, img_size=16,
                             patch_size=4, out_type='cls_token'),
               head=dict(type='DINOHead', in_channels=24, hidden_channels=32,
                         bottleneck_channels=8, num_prototypes=16),
               loss=dict(type='SimDINOLoss'))
    with pytest.raises(ValueError, match='num_prototypes=None'):
        MODELS.build(cfg)
    cfg['head']['num_prototypes'] = None
    cfg['loss']['num_global'] = 1
    with pytest.raises(ValueError, match='num_global=1.*num_global_views=2'):
        MODELS.build(cfg)


# ---------------------------------------------------------------- runner-level tests
def digits_cfg(config=DEMO, num_train=64, batch_size=16, work_dir='.', image_size=16,
               patch_size=4):
    """The demo config on the in-memory digits (no download), shrunk for a test."""
    cfg = Config.fromfile(config)
    cfg.model.backbone.patch_size = patch_size
    if 'patch_size' in cfg.model.data_preprocessor:  # the masking grid of SimDINOv2
        cfg.model.data_preprocessor.patch_size = patch_size
        cfg.train_dataloader.collate_fn.patch_size = patch_size  # the loader draws the masks
    crop = cfg.train_dataloader.dataset.dataset.pipeline[0]
    crop.update(global_size=image_size, local_size=8)
    cfg.train_dataloader.dataset.dataset = dict(
        type='SklearnDigits', split='train', image_size=image_size, num_train=num_train,
        pipeline=cfg.train_dataloader.dataset.dataset.pipeline)
    cfg.train_dataloader.batch_size = batch_size
    cfg.model.backbone.img_size = image_size
    cfg.model.data_preprocessor.update(mean=[80.0] * 3, std=[100.0] * 3)
    cfg.work_dir = str(work_dir)
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    cfg.log_level = 'WARNING'
    return cfg


def small_model(cfg, embed_dims=32):
    cfg.model.backbone.arch = dict(embed_dims=embed_dims, num_layers=2, num_heads=2,
                                   feedforward_channels=2 * embed_dims)
    cfg.model.head.update(in_channels=embed_dims, hidden_channels=64, bottleneck_channels=16)


def without_knn(cfg):
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'KNNHook']


def train(cfg):
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'differ after resume: {different[:5]}'


def resume_is_exact(config, tmp_path):
    def cfg_for(name):
        cfg = digits_cfg(config, work_dir=tmp_path / name)
        small_model(cfg)
        without_knn(cfg)
        cfg.default_hooks.checkpoint.max_keep_ckpts = -1
        cfg.train_cfg.max_epochs = 4  # (the schedules keep the demo's own length)
        cfg.model.backbone.drop_path_rate = 0.1  # in-model randomness, as the recipes
        return cfg

    straight = train(cfg_for('straight'))
    resumed_cfg = cfg_for('resumed')
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'straight' / 'epoch_2.pth')
    resumed = train(resumed_cfg)
    assert resumed.epoch == straight.epoch == 4
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    opt_a = straight.optim_wrapper.optimizer.state_dict()
    opt_b = resumed.optim_wrapper.optimizer.state_dict()
    for k, state in opt_a['state'].items():
        assert_same_state(state, opt_b['state'][k])
    assert opt_a['param_groups'] == opt_b['param_groups']


def test_resume_is_bitwise_exact(tmp_path):
    """4 epochs straight == 2 epochs, then resume from the epoch-2 checkpoint for 2 more
    (student, EMA teacher, optimiser state; drop-path and augmentations depend on RNG)."""
    resume_is_exact(DEMO, tmp_path)


def stretch_schedule(cfg, factor: int):
    """``factor`` times more epochs, every scheduler stretched alike (warm-up included)."""
    for sched in cfg.param_scheduler:
        for key in ('begin', 'end', 'T_max'):
            if key in sched:
                sched[key] *= factor
    cfg.train_cfg.max_epochs *= factor


def knn_before_after(config, tmp_path, epoch_factor=2, batch_size=64):
    """Train the demo config (its model, a stretched schedule) on the 1,300 digits training
    images at 16 px with patch 4 (the demo's 4x4 grid); the config's KNNHook evaluates the
    teacher before and after training (20-NN, digits train -> test split)."""
    cfg = digits_cfg(config, num_train=1300, batch_size=batch_size, work_dir=tmp_path)
    stretch_schedule(cfg, epoch_factor)
    knn = [h for h in cfg.custom_hooks if h['type'] == 'KNNHook'][0]
    knn['interval'] = cfg.train_cfg.max_epochs
    for name, split in (('train_dataloader', 'train'), ('val_dataloader', 'test')):
        knn[name] = dict(batch_size=250, num_workers=0,
                         sampler=dict(type='DefaultSampler', shuffle=False),
                         collate_fn=dict(type='default_collate'),
                         dataset=dict(type='SklearnDigits', split=split, image_size=16,
                                      num_train=1300, pipeline=[dict(type='PackInputs')]))
    runner = train(cfg)
    hook = next(h for h in runner.hooks if type(h).__name__ == 'KNNHook')
    (_, before), (_, after) = hook.history[0], hook.history[-1]
    return before['knn/top1'], after['knn/top1']


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_config_learns(tmp_path):
    before, after = knn_before_after(DEMO, tmp_path)
    print(f'SimDINO demo on digits: 20-NN top-1 {before:.2f} (random init) -> {after:.2f}')
    assert after > before + 2.0


@pytest.mark.parametrize('name, arch, width', [('vit-s16_8xb64.py', 'deit-small', 384),
                                               ('vit-b16_8xb64.py', 'base', 768)])
def test_recipe_matches_the_published_one(name, arch, width):
    """docs/simdino.md#simdino-vit-b16-recipe (README command + main_dino.py defaults)."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'simdino', name))
    m = cfg.model
    assert m.type == 'SimDINO' and m.backbone.arch == arch
    assert m.backbone.patch_size == 16 and m.backbone.drop_path_rate == 0.1
    assert m.head.in_channels == width and m.head.num_prototypes is None
    assert (m.head.hidden_channels, m.head.bottleneck_channels) == (2048, 256)
    assert m.loss == dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean',
                          gamma=None, reduce_cov=False)
    assert m.teacher_momentum == 0.996 and m.get('teacher_momentum_end', 1.0) == 1.0
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.train_cfg.max_epochs == 100
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW' and opt.optimizer.betas == (0.9, 0.999)
    assert opt.optimizer.lr == 5e-4 and cfg.auto_scale_lr == dict(base_batch_size=256,
                                                                  enable=True)
    assert opt.optimizer.weight_decay == 0.04
    assert opt.clip_grad == dict(type='per_tensor', max_norm=3.0)
    assert opt.type == 'AmpDistillOptimWrapper' and opt.dtype == 'float16'
    warm, cos, wd = cfg.param_scheduler
    assert warm.end == cos.begin == 10 and cos.end == 100 and cos.eta_min == 1e-6
    assert (wd.param_name, wd.eta_min_ratio, wd.end) == ('weight_decay', 10.0, 100)
    crop = cfg.train_dataloader.dataset.dataset.pipeline[1]
    assert crop.type == 'MultiCrop' and (crop.num_global, crop.num_local) == (2, 10)
    assert (crop.global_size, crop.local_size) == (224, 96)
    assert crop.global_scale == (0.4, 1.0) and crop.local_scale == (0.05, 0.4)
    assert crop.global_blur_probs == (1.0, 0.1) and crop.local_blur_prob == 0.5
    assert crop.solarize_prob == 0.2 and crop.interpolation == 'bicubic'
