"""DINO / SelfDistillation on real modules: EMA teacher, multi-crop routing, loss wiring."""
import math

import numpy as np
import pytest
import torch
from mmpretrain.registry import MODELS

from mmselfsup_vmf.models.algorithms.self_distillation import group_by_size, split_tokens

EMBED = 24


def vit(drop_path=0.0):
    return dict(type='VisionTransformer', img_size=16, patch_size=8, out_type='cls_token',
                drop_path_rate=drop_path,
                arch=dict(embed_dims=EMBED, num_layers=2, num_heads=2,
                          feedforward_channels=2 * EMBED))


def build_dino(backbone=None, neck=None, in_channels=EMBED, k=32, **kwargs):
    cfg = dict(type='DINO', backbone=backbone or vit(),
               head=dict(type='DINOHead', in_channels=in_channels, hidden_channels=32,
                         bottleneck_channels=16, num_prototypes=k, norm_last_layer=False),
               loss=dict(type='DINOLoss', num_prototypes=k, dim=16))
    if neck is not None:
        cfg['neck'] = neck
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def multicrop_views(batch, seed=0, num_local=3):
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 3, 16, 16, generator=gen) for _ in range(2)]
            + [torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(num_local)])


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- teacher
def test_teacher_is_a_frozen_eval_mode_copy_with_its_own_storage():
    model = build_dino(backbone=vit(drop_path=0.2))
    model.train()
    teacher = model.teacher.module
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # same values after init, but distinct tensors and no shared memory
    student = dict(model._student_modules().state_dict())
    for name, t in teacher.state_dict().items():
        torch.testing.assert_close(t, student[name], rtol=0, atol=0)
    s_ptrs = {p.untyped_storage().data_ptr() for p in model._student_modules().parameters()}
    t_ptrs = {p.untyped_storage().data_ptr() for p in teacher.parameters()}
    assert s_ptrs.isdisjoint(t_ptrs)
    assert teacher['backbone'] is not model.backbone and teacher['head'] is not model.head
    # eval mode = no drop-path: two teacher passes agree, two student passes do not
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(teacher['backbone'](x)[-1], teacher['backbone'](x)[-1])
        assert not torch.equal(model.backbone(x)[-1], model.backbone(x)[-1])


def test_ema_update_on_real_modules():
    total, m0 = 10, 0.9
    model = build_dino(teacher_momentum=m0)
    model.set_train_progress(epoch=0, iteration=0, max_iters=total)
    model.update_teacher()  # first call: copy (teacher already equals the student)
    old = {k: v.clone() for k, v in model.teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in model._student_modules().parameters():
            p.mul_(1.5).add_(0.3)
    student = {k: v.clone() for k, v in model._student_modules().state_dict().items()}
    model.update_teacher()  # DINO's update after iteration 0: m(0) = m0
    new = model.teacher.module.state_dict()
    for name, _ in model.teacher.module.named_parameters():
        expected = m0 * old[name] + (1 - m0) * student[name]
        torch.testing.assert_close(new[name], expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(new[name], old[name])
    # the student itself is not modified by the update
    for name, value in model._student_modules().state_dict().items():
        assert torch.equal(value, student[name])


@pytest.mark.parametrize('momentum, copies', [(0.0, True), (1.0, False)])
def test_momentum_ends_copy_or_freeze_the_teacher(momentum, copies):
    """DINO momentum 0 (update weight 1, outside mmengine's open interval) makes the teacher
    the student after every update ("no self-distillation"); momentum 1 freezes it."""
    model = build_dino(teacher_momentum=momentum, teacher_momentum_end=momentum)
    model.set_train_progress(epoch=0, iteration=0, max_iters=10)
    model.update_teacher()  # first call: copy
    old = {k: v.clone() for k, v in model.teacher.module.state_dict().items()}
    for step in range(2):
        with torch.no_grad():
            for p in model._student_modules().parameters():
                p.mul_(1.5).add_(0.3)
        model.update_teacher()
        student = model._student_modules().state_dict()
        for name, value in model.teacher.module.named_parameters():
            assert torch.equal(value, student[name] if copies else old[name]), (step, name)


# ----------------------------------------------------------------------------- routing
def test_only_global_crops_go_through_the_teacher():
    model = build_dino()
    model.train()
    model.set_train_progress(epoch=0, iteration=0, max_iters=5)
    seen = {'teacher': [], 'student': []}
    hooks = [model.teacher.module['backbone'].register_forward_hook(
                 lambda m, i, o: seen['teacher'].append(tuple(i[0].shape))),
             model.backbone.register_forward_hook(
                 lambda m, i, o: seen['student'].append(tuple(i[0].shape)))]
    try:
        model.loss(multicrop_views(batch=4, num_local=3), [])
    finally:
        for h in hooks:
            h.remove()
    # one call per crop size: the 2 globals together, the 3 locals together
    assert seen['teacher'] == [(8, 3, 16, 16)]
    assert seen['student'] == [(8, 3, 16, 16), (12, 3, 8, 8)]
    assert group_by_size(multicrop_views(2, num_local=3)) == [(0, 2), (2, 5)]
    assert group_by_size([torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2),
                          torch.zeros(1, 3, 4, 4)]) == [(0, 1), (1, 2), (2, 3)]


def test_loss_equals_reference_from_the_modules_outputs():
    """loss_dino = mean over (teacher global i, student view v != i) of the cross-entropy,
    teacher at the scheduled temperature of the current epoch, centre 0 at the start."""
    model = build_dino(teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=3))
    model.train()
    model.set_train_progress(epoch=2, iteration=0, max_iters=5)  # linspace(0.04, 0.07, 3)[2] = 0.07
    views = multicrop_views(batch=3, seed=1, num_local=2)
    losses = model.loss(views, [])
    assert set(losses) == {'loss_dino', 'teacher_entropy', 'teacher_unique_argmax'}
    assert losses['loss_dino'].requires_grad
    assert not losses['teacher_entropy'].requires_grad

    with torch.no_grad():  # independent pass, one view at a time
        teacher = [model.teacher.module['head'](model.teacher.module['backbone'](v)[-1])
                   for v in views[:2]]
        student = [model.head(model.backbone(v)[-1]) for v in views]
    q = [np.exp(np_log_softmax(t.double().numpy() / 0.07)) for t in teacher]
    log_p = [np_log_softmax(s.double().numpy() / 0.1) for s in student]
    terms = [(-(qi * lp).sum(-1)).mean() for i, qi in enumerate(q)
             for v, lp in enumerate(log_p) if v != i]
    assert len(terms) == 2 * 4 - 2
    assert losses['loss_dino'].item() == pytest.approx(np.mean(terms), rel=1e-5)
    # the centre moved after the loss, from the raw teacher scores
    expected_center = 0.1 * np.concatenate([t.double().numpy() for t in teacher]).mean(0)
    np.testing.assert_allclose(model.loss_module.center.center.numpy(), expected_center,
                               rtol=1e-5, atol=1e-7)

    model.zero_grad()
    losses['loss_dino'].backward()
    assert model.head.mlp[0].weight.grad.abs().sum() > 0
    assert model.backbone.cls_token.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())


def test_batch_of_one_works_for_dino():
    """DINO has no per-GPU batch >= 2 requirement (unlike methods with batch statistics);
    a single image per device trains."""
    model = build_dino()
    model.train()
    model.set_train_progress(epoch=0, iteration=0, max_iters=5)
    loss = model.loss(multicrop_views(batch=1, num_local=1), [])['loss_dino']
    assert torch.isfinite(loss)
    loss.backward()


def test_resnet_with_pooling_neck_and_knn_features():
    backbone = dict(type='ResNet', depth=18, stem_channels=8, base_channels=8)
    model = build_dino(backbone=backbone, neck=dict(type='GlobalAveragePooling'),
                       in_channels=64,
                       data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[0.] * 3,
                                              std=[1.] * 3))
    model.train()
    model.set_train_progress(epoch=0, iteration=0, max_iters=5)
    assert 'neck' in model.teacher.module
    views = multicrop_views(batch=4, num_local=2)
    loss = model.loss(views, [])['loss_dino']
    assert torch.isfinite(loss) and loss.requires_grad
    # k-NN features: the teacher's pooled features of the first view
    feats = model.knn_features({'inputs': [views[0]], 'data_samples': None})
    with torch.no_grad():
        t = model.teacher.module
        expected = t['neck'](t['backbone'](views[0]))[-1]
    assert feats.shape == (4, 64) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected)
    student = model.knn_features({'inputs': [views[0]], 'data_samples': None}, key='student')
    assert student.shape == (4, 64)
    with pytest.raises(ValueError, match="'teacher' or 'student'"):
        model.knn_features({'inputs': [views[0]], 'data_samples': None}, key='ema')


def test_bad_backbone_output_and_view_count():
    with pytest.raises(ValueError, match='GlobalAveragePooling'):
        split_tokens(torch.zeros(2, 8, 4, 4), 1)
    cls, patches = split_tokens(torch.zeros(2, 5, 8), 1)
    assert cls.shape == (2, 8) and patches.shape == (2, 4, 8)
    model = build_dino()
    with pytest.raises(ValueError, match='num_global_views=2.*produced 1'):
        model.loss([torch.zeros(2, 3, 16, 16)], [])
    with pytest.raises(ValueError, match='num_global_views must be >= 1'):
        build_dino(num_global_views=0)
    with pytest.raises(ValueError, match='teacher_momentum'):
        build_dino(teacher_momentum=1.5)


def test_dino_momentum_convention_is_converted():
    """DINO's 0.996 -> 1 becomes mmpretrain's update weight 0.004 -> 0."""
    model = build_dino(teacher_momentum=0.996)
    assert model.teacher.momentum == pytest.approx(0.004)
    assert model.teacher.end_momentum == pytest.approx(0.0)
    assert math.isclose(1 - model.teacher.momentum, 0.996)


def test_vmf_dimension_must_match_the_head_bottleneck():
    """p of log C_p(kappa) is the prototype dimension: a different loss.dim would silently
    give another normaliser, so the build fails and names both config keys."""
    with pytest.raises(ValueError, match=r'model\.loss\.dim=64 .*bottleneck_channels=16'):
        build_dino(loss=dict(type='DINOLoss', num_prototypes=32, dim=64, vmf=True,
                             centering='probability'))
    # the same mismatch without the vMF term is harmless (dim is unused) and builds
    build_dino(loss=dict(type='DINOLoss', num_prototypes=32, dim=64))
    ibot = dict(
        type='iBOT',
        backbone=dict(type='MaskedViT', img_size=16, patch_size=8, out_type='raw',
                      arch=dict(embed_dims=EMBED, num_layers=1, num_heads=2,
                                feedforward_channels=2 * EMBED)),
        head=dict(type='DINOHead', in_channels=EMBED, hidden_channels=32,
                  bottleneck_channels=16, num_prototypes=32),
        loss=dict(type='DINOLoss', num_prototypes=32, dim=16, vmf=True),
        patch_loss=dict(type='iBOTPatchLoss', num_prototypes=32, dim=256, vmf=True))
    with pytest.raises(ValueError, match=r'model\.patch_loss\.dim=256'):
        MODELS.build(ibot)
