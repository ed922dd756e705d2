"""SimDINOv2: the masked-patch term inside the algorithm (test D), the masking wiring
with a real MaskedViT against an independent float64 evaluation, the layer-wise lr recipe,
clear errors, exact resume and (slow) the demo config learning on the digits data."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.optim import build_optim_wrapper as mmengine_build_optim_wrapper
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from test_simdino import knn_before_after, official_simdino_loss, resume_is_exact  # noqa: F401
from testing_utils import DEMO_TIMEOUT
from torch import nn

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
DEMO = osp.join(REPO, 'configs', 'simdinov2', 'demo_fashion-mnist.py')
TINY_ARCH = dict(embed_dims=24, num_layers=2, num_heads=2, feedforward_channels=48)


@MODELS.register_module(name='_PixelTokens', force=True)
class PixelTokens(nn.Module):
    """Images (B, 2C, 1, N) -> tokens (B, 1 + N, C) with no parameters.

    Patch p is channels [:C] of column p; where ``mask`` is True it is channels [C:] instead
    (what "the student sees at a masked position"). CLS = the mean patch. Lets a test put
    any student / teacher token at any masked position.
    """
    num_extra_tokens = 1

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x, mask=None):
        c = self.channels
        tokens = x[:, :c, 0].transpose(1, 2)
        if mask is not None:
            hidden = x[:, c:, 0].transpose(1, 2)
            tokens = torch.where(mask.reshape(x.shape[0], -1, 1), hidden, tokens)
        return (torch.cat([tokens.mean(1, keepdim=True), tokens], 1), )


# test D (docs/simdino.md#reference-values-for-the-simdino-tests): 3 images x 4 patches
TEST_D_MASKS = [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]]
TEST_D_STUDENT = [[1, 0, 2, 1], [0, 1, 1, -1], [2, 2, 0, 1], [1, -1, 1, 0], [0, 0, 1, 2]]
TEST_D_TEACHER = [[1, 1, 2, 0], [1, 1, 0, -1], [2, 1, 1, 1], [0, -1, 1, 1], [1, 0, 1, 2]]
TEST_D_LOSS = -0.523494966614


def test_d_reference_by_hand():
    """The value from its cosines: -(1/3)[(c1 + c2)/2 + (c3 + c4 + c5)/3]."""
    s, t = np.array(TEST_D_STUDENT, float), np.array(TEST_D_TEACHER, float)
    cos = (s * t).sum(1) / np.linalg.norm(s, axis=1) / np.linalg.norm(t, axis=1)
    np.testing.assert_allclose(cos, [5 / 6, 2 / 3, 0.881917, 2 / 3, 0.912871], atol=1e-6)
    assert abs(-((cos[0] + cos[1]) / 2 + cos[2:].sum() / 3) / 3 - TEST_D_LOSS) < 1e-11


def build_test_d_model(patch_loss_weight=1.0):
    """SimDINOv2 with one global view of 3 images (B_g = 3) on PixelTokens + identity head."""
    model = MODELS.build(dict(
        type='SimDINOv2', backbone=dict(type='_PixelTokens', channels=4),
        head=dict(type='DINOHead', in_channels=4, bottleneck_channels=4, num_layers=1,
                  num_prototypes=None),
        loss=dict(type='SimDINOLoss', num_global=1), num_global_views=1,
        patch_loss_weight=patch_loss_weight)).double()
    with torch.no_grad():
        model.head.mlp[0].weight.copy_(torch.eye(4))
        model.head.mlp[0].bias.zero_()
    model.sync_teacher()
    model.train(False)
    masks = torch.tensor(TEST_D_MASKS, dtype=torch.bool)
    visible = torch.arange(3 * 4 * 4, dtype=torch.float64).reshape(3, 4, 4) % 5 + 1  # (B,N,C)
    hidden = torch.full((3, 4, 4), 7.0, dtype=torch.float64)
    visible[masks] = torch.tensor(TEST_D_TEACHER, dtype=torch.float64)
    hidden[masks] = torch.tensor(TEST_D_STUDENT, dtype=torch.float64)
    global_view = torch.cat([visible, hidden], -1).transpose(1, 2).unsqueeze(2)  # (3,8,1,4)
    local_view = torch.rand(3, 8, 1, 2, dtype=torch.float64) + 0.5
    samples = []
    for m in masks:
        sample = DataSample()
        sample.set_mask(m.reshape(1, 1, 4))
        samples.append(sample)
    return model, [global_view, local_view], samples


@pytest.mark.parametrize('weight', [1.0, 2.5])
def test_patch_loss_inside_simdinov2_equals_test_d(weight):
    model, views, samples = build_test_d_model(weight)
    losses = model.loss(views, samples)
    # one global view: no global-crop pair, so no global_comp
    assert set(losses) == {'loss_comp', 'loss_expa', 'loss_patch', 'comp', 'expa',
                           'mask_ratio'}
    np.testing.assert_allclose(losses['loss_patch'].item(), weight * TEST_D_LOSS, rtol=1e-11)
    assert losses['mask_ratio'].item() == pytest.approx(5 / 12)


# ---------------------------------------------------------------- real MaskedViT
def tiny_simdinov2(dtype=torch.float64):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SimDINOv2',
        backbone=dict(type='MaskedViT', arch=TINY_ARCH, img_size=16, patch_size=4,
                      out_type='raw', num_register_tokens=2, layer_scale_init_value=0.1,
                      drop_path_rate=0.2, drop_path_uniform=True),
        head=dict(type='DINOHead', in_channels=24, hidden_channels=32, bottleneck_channels=8,
                  num_prototypes=None),
        loss=dict(type='SimDINOLoss'),
        data_preprocessor=dict(type='MaskedSelfSupDataPreprocessor', patch_size=4,
                               mask_mode='stratified',
                               mask_cfg=dict(mask_probability=0.5, ratio_range=(0.1, 0.5)))))
    model.init_weights()
    with torch.no_grad():  # a distinguishable mask token and a teacher != student
        model.backbone.mask_token.normal_()
        g = torch.Generator().manual_seed(2)
        for p in model.teacher.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.to(dtype)


def preprocessed_batch(model, batch=6, num_local=2):
    g = torch.Generator().manual_seed(1)
    data = dict(inputs=[torch.rand(batch, 3, 16, 16, generator=g) * 255 for _ in range(2)]
                + [torch.rand(batch, 3, 8, 8, generator=g) * 255 for _ in range(num_local)],
                data_samples=[DataSample() for _ in range(batch)])
    data = model.data_preprocessor(data, True)
    return [v.to(torch.float64) for v in data['inputs']], data['data_samples']


def test_student_sees_masked_globals_teacher_unmasked_globals_only():
    model = tiny_simdinov2()
    views, samples = preprocessed_batch(model, batch=6, num_local=3)
    calls = {'student': [], 'teacher': []}

    def spy(name):
        def hook(module, args, kwargs):  # a list of crop batches: one entry per batch
            batches, masks = args[0], kwargs.get('mask')
            if isinstance(batches, torch.Tensor):
                batches, masks = [batches], [masks]
            calls[name].extend((tuple(b.shape), m) for b, m in
                               zip(batches, masks or [None] * len(batches)))
        return hook

    model.backbone.register_forward_pre_hook(spy('student'), with_kwargs=True)
    model.teacher.module['backbone'].register_forward_pre_hook(spy('teacher'),
                                                               with_kwargs=True)
    model.train(False)
    model.loss(views, samples)
    assert [(s, m is None) for s, m in calls['teacher']] == [((12, 3, 16, 16), True)]
    (g_shape, g_mask), (l_shape, l_mask) = calls['student']
    assert (g_shape, l_shape, l_mask) == ((12, 3, 16, 16), (18, 3, 8, 8), None)
    # crops view-major: view 0 of every image, then view 1; masks as the preprocessor drew
    expected = torch.cat([torch.stack([s.mask[v] for s in samples]).flatten(1)
                          for v in range(2)])
    assert torch.equal(g_mask.reshape(12, -1), expected)
    masked_crops = int(expected.any(1).sum())
    assert masked_crops == 6  # stratified: exactly half of the 12 global crops
    ratios = expected.float().mean(1)[expected.any(1)]
    assert ratios.min() >= 1 / 16 and ratios.max() <= 0.5


def patch_features(modules, x, mask=None):
    """Head outputs of every token: (B, N, d) patches and (B, d) CLS."""
    out = modules['backbone'](x, mask)[-1]
    extra = modules['backbone'].num_extra_tokens
    return modules['head'](out[:, extra:]), modules['head'](out[:, 0])


def test_total_loss_equals_float64_reference_with_real_masks():
    """CLS term (official MCRLoss) + patch term, evaluated independently in numpy."""
    model = tiny_simdinov2()
    views, samples = preprocessed_batch(model, batch=6)
    model.train(False)
    losses = model.loss(views, samples)
    with torch.no_grad():
        student, teacher = model._student_modules(), model.teacher.module
        s_cls, t_cls, s_patch, t_patch, masks = [], [], [], [], []
        for v, x in enumerate(views):
            mask = torch.stack([s.mask[v] for s in samples]) if v < 2 else None
            sp, sc = patch_features(student, x, mask)
            s_cls.append(sc.numpy())
            if v < 2:
                tp, tc = patch_features(teacher, x)
                t_cls.append(tc.numpy())
                s_patch.append(sp.numpy())
                t_patch.append(tp.numpy())
                masks.append(mask.flatten(1).numpy())
    ref_cls, _, _ = official_simdino_loss(s_cls, t_cls, 0.05, 'mean')
    total_patch, num_crops = 0.0, 0
    for sp, tp, mk in zip(s_patch, t_patch, masks):
        for i in range(sp.shape[0]):
            num_crops += 1
            idx = np.flatnonzero(mk[i])
            if idx.size:
                a, b = sp[i, idx], tp[i, idx]
                cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                total_patch += cos.mean()
    ref_patch = -total_patch / num_crops  # every global crop counts (12)
    assert num_crops == 12
    np.testing.assert_allclose(losses['loss_patch'].item(), ref_patch, rtol=1e-10)
    np.testing.assert_allclose((losses['loss_comp'] + losses['loss_expa']).item(), ref_cls,
                               rtol=1e-10)


def test_backward_reaches_mask_token_and_registers_not_teacher():
    model = tiny_simdinov2(torch.float32)
    views, samples = preprocessed_batch(model)
    model.train(False)
    losses = model.loss([v.float() for v in views], samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.backbone.mask_token.grad.abs().sum() > 0
    assert model.backbone.register_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_bf16_autocast_step_stays_close_to_fp32():
    """The heads and backbone in bf16, the loss terms in fp32 (coding rate outside autocast)."""
    model = tiny_simdinov2(torch.float32)
    views, samples = preprocessed_batch(model)
    views = [v.float() for v in views]
    model.train(False)
    ref = model.loss(views, samples)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model.loss(views, samples)
    for key in ('loss_comp', 'loss_expa', 'loss_patch'):
        assert out[key].dtype == torch.float32
        assert abs(out[key].item() - ref[key].item()) < 2e-2 * max(1.0, abs(ref[key].item()))
    sum(v for k, v in out.items() if 'loss' in k).backward()
    assert torch.isfinite(model.backbone.mask_token.grad).all()


def test_clear_errors():
    model = tiny_simdinov2(torch.float32)
    views, samples = preprocessed_batch(model, batch=4)
    views = [v.float() for v in views]
    with pytest.raises(ValueError, match='MaskedSelfSupDataPreprocessor'):
        model.loss(views, [DataSample() for _ in range(4)])
    with pytest.raises(ValueError, match='at least 2 images per GPU.*batch of 1'):
        model.loss([v[:1] for v in views], samples[:1])
    model.backbone.out_type = 'cls_token'
    model.teacher.module['backbone'].out_type = 'cls_token'
    with pytest.raises(ValueError, match="out_type='raw'"):
        model.loss(views, samples)
    model.backbone.out_type = 'raw'
    model.teacher.module['backbone'].out_type = 'raw'
    wrong = []
    for s in samples:  # masks of an 8x8 grid for a 4x4-patch backbone
        d = DataSample()
        d.set_mask(torch.zeros(2, 8, 8, dtype=torch.bool))
        wrong.append(d)
    with pytest.raises(ValueError, match='mask shape|patch_size'):
        model.loss(views, wrong)


# ---------------------------------------------------------------- optimiser recipe
def build_optim_wrapper(model, cfg):
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # as a Runner with our configs
        return mmengine_build_optim_wrapper(model, cfg)


def dinov2_lr_wd(name, num_layers, decay=0.9, patch_embed_mult=0.2):
    """DINOv2 param_groups.py rule written for mmpretrain names (ln* are the norms)."""
    layer_id = num_layers + 1
    if name.startswith('backbone.'):
        short = name[len('backbone.'):]
        if short.split('.')[0] in ('pos_embed', 'patch_embed', 'mask_token', 'cls_token',
                                   'register_tokens'):
            layer_id = 0
        elif short.startswith('layers.'):
            layer_id = int(short.split('.')[1]) + 1
    lr = decay**(num_layers + 1 - layer_id) * (patch_embed_mult if 'patch_embed' in name else 1)
    no_wd = (name.endswith('.bias') or 'gamma' in name
             or any(part.startswith('ln') for part in name.split('.')))
    return lr, 0.0 if no_wd else 1.0


def test_layer_decay_and_patch_embed_lr_follow_dinov2():
    model = tiny_simdinov2(torch.float32)
    wrapper = build_optim_wrapper(model, dict(
        type='DistillOptimWrapper', optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.04),
        clip_grad=dict(max_norm=3.0), constructor='LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.9, bias_decay_mult=0.0, norm_decay_mult=0.0,
                           flat_decay_mult=0.0,
                           custom_keys={'backbone.patch_embed': dict(lr_mult=0.2)})))
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            seen.add(name)
            lr_mult, wd_mult = dinov2_lr_wd(name, num_layers=2)
            assert group['lr'] == pytest.approx(4e-3 * lr_mult, rel=1e-12), name
            assert group['weight_decay'] == pytest.approx(0.04 * wd_mult), name
    student = {n for n, p in model.named_parameters() if not n.startswith('teacher.')}
    assert seen == student  # every student parameter once, no teacher parameter
    assert 'backbone.patch_embed.projection.bias' in seen


def test_lr_mult_rejects_bad_values():
    model = tiny_simdinov2(torch.float32)
    with pytest.raises(ValueError, match="custom_keys\\['backbone.patch_embed'\\].lr_mult"):
        build_optim_wrapper(model, dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.04),
            constructor='LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.9,
                               custom_keys={'backbone.patch_embed': dict(lr_mult=-1)})))


# ---------------------------------------------------------------- runner-level tests
def test_resume_is_bitwise_exact(tmp_path):
    """Masks are drawn from (seed, epoch, sample indices): a resumed run redraws them."""
    resume_is_exact(DEMO, tmp_path)


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_config_learns(tmp_path):
    before, after = knn_before_after(DEMO, tmp_path)
    print(f'SimDINOv2 demo on digits: 20-NN top-1 {before:.2f} (random init) -> {after:.2f}')
    assert after > before + 2.0


@pytest.mark.parametrize('name, arch, width', [('vit-b16_8xb128.py', 'base', 768),
                                               ('vit-l16_8xb128.py', 'large', 1024)])
def test_recipe_matches_the_published_one(name, arch, width):
    """docs/simdino.md#simdinov2-recipe (simdino_config.yaml over ssl_default_config.yaml)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'simdinov2', name))
    m = cfg.model
    b = m.backbone
    assert m.type == 'SimDINOv2' and b.type == 'MaskedViT' and b.arch == arch
    assert (b.patch_size, b.out_type, b.num_register_tokens) == (16, 'raw', 4)
    assert b.layer_scale_init_value == 0.1
    assert b.drop_path_rate == 0.2 and b.drop_path_uniform is True
    assert b.pos_embed_antialias is True
    assert m.head.in_channels == width and m.head.num_prototypes is None
    assert (m.head.hidden_channels, m.head.bottleneck_channels) == (2048, 256)
    assert m.loss.eps == 0.05 and m.loss.coeff == 1.0 and m.loss.expa_type == 'mean'
    assert m.loss.reduce_cov is False and m.patch_loss_weight == 1.0
    assert m.teacher_momentum == 0.9
    pre = m.data_preprocessor
    assert (pre.type, pre.mask_mode, pre.patch_size) == (
        'MaskedSelfSupDataPreprocessor', 'stratified', 16)
    assert pre.mask_cfg == dict(mask_probability=0.5, ratio_range=(0.1, 0.5))
    assert cfg.train_dataloader.batch_size == 128 and cfg.train_cfg.max_epochs == 100
    opt = cfg.optim_wrapper
    assert opt.optimizer.lr == 4e-3 and opt.optimizer.weight_decay == 0.04
    assert opt.clip_grad == dict(type='per_module', max_norm=3.0)  # backbone, head apart
    assert opt.constructor == 'LayerDecayOptimWrapperConstructor'
    assert opt.paramwise_cfg.layer_decay_rate == 0.9
    assert opt.paramwise_cfg.custom_keys == {'backbone.patch_embed': dict(lr_mult=0.2)}
    warm, cos, wd = cfg.param_scheduler
    assert warm.end == cos.begin == 10 and cos.end == 100
    assert cos.eta_min_ratio * 4e-3 == pytest.approx(1e-6)
    assert (wd.param_name, wd.eta_min_ratio) == ('weight_decay', 10.0)
    crop = cfg.train_dataloader.dataset.dataset.pipeline[1]
    assert (crop.num_global, crop.num_local) == (2, 10)
    assert crop.global_scale == (0.4, 1.0) and crop.local_scale == (0.05, 0.4)
    assert crop.global_blur_probs == (1.0, 0.1) and crop.local_blur_prob == 0.5
