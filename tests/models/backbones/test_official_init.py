"""``backbone_init='dino' / 'dinov2'``: the official ViT initialisation on mmpretrain's ViT.

References written out here: DINO's ``_init_weights`` (trunc-normal std 0.02 linears, zero
biases, LayerNorm 1/0, CLS trunc-normal 0.02), DINOv2's ``init_weights_vit_timm`` (the same
linears, CLS normal std 1e-6), and PyTorch's default Conv2d init for the patch embedding
(kaiming-uniform with a = sqrt(5): |w| <= 1/sqrt(fan_in)). mmpretrain's own init differs in
the CLS token and the MLP linears, which the test checks too, so it cannot pass by accident.
"""
import math

import numpy as np
import pytest
import torch
from mmpretrain.registry import MODELS

WIDTH = 384


def build_simdino(backbone_init, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(dict(
        type='SimDINO',
        backbone=dict(type='VisionTransformer', img_size=32, patch_size=8, out_type='cls_token',
                      arch=dict(embed_dims=WIDTH, num_layers=2, num_heads=6,
                                feedforward_channels=4 * WIDTH)),
        head=dict(type='DINOHead', in_channels=WIDTH, hidden_channels=64,
                  bottleneck_channels=32, num_prototypes=None),
        loss=dict(type='SimDINOLoss'),
        backbone_init=backbone_init))
    model.init_weights()
    return model


def linears(vit):
    return [m for m in vit.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize('style', ['dino', 'dinov2'])
def test_official_init_statistics(style):
    vit = build_simdino(style).backbone
    weights = np.concatenate([m.weight.detach().numpy().ravel() for m in linears(vit)])
    assert weights.std() == pytest.approx(0.02, rel=0.01)  # ~2.4 M draws
    assert np.abs(weights).max() <= 2.0  # cut at +-2 (absolute, as DINO's trunc_normal_)
    assert all(torch.all(m.bias == 0) for m in linears(vit))
    for m in vit.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = vit.patch_embed.projection
    fan_in = conv.weight[0].numel()
    bound = 1 / math.sqrt(fan_in)
    w = conv.weight.detach().numpy()
    assert np.abs(w).max() <= bound and w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    cls = vit.cls_token.detach().numpy().ravel()
    if style == 'dino':
        assert cls.std() == pytest.approx(0.02, rel=0.2)
    else:
        assert 0 < cls.std() < 1e-5
    pos = vit.pos_embed.detach().numpy().ravel()
    assert pos.std() == pytest.approx(0.02, rel=0.1)


def test_mmpretrain_init_is_different_and_the_teacher_follows():
    plain = build_simdino(None).backbone
    dino = build_simdino('dino')
    # mmpretrain: zero CLS token, Xavier MLP linears (std sqrt(2/(384+1536)) = 0.032)
    assert torch.all(plain.cls_token == 0)
    fc = plain.layers[0].ffn.layers[0][0].weight.detach().numpy()
    assert fc.std() == pytest.approx(math.sqrt(2 / (WIDTH + 4 * WIDTH)), rel=0.02)
    # the teacher starts as a copy of the re-initialised student
    student = dino.backbone.state_dict()
    for key, value in dino.teacher.module['backbone'].state_dict().items():
        assert torch.equal(value, student[key]), key


def test_bad_backbone_init_names_the_key():
    with pytest.raises(ValueError, match='model.backbone_init'):
        build_simdino('timm')
