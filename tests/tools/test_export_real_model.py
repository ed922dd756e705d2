"""Export the teacher of a real pre-training model and check the features are the teacher's."""
import os.path as osp

import torch
from mmengine.runner import save_checkpoint
from mmpretrain.models import VisionTransformer
from mmpretrain.registry import MODELS
from testing_utils import load_tool as _load_tool  # noqa: E402

TOOL = osp.join(osp.dirname(__file__), '..', '..', 'tools', 'model_converters',
                'extract_backbone.py')
ARCH = dict(embed_dims=48, num_layers=2, num_heads=3, feedforward_channels=96)


def _tool():
    return _load_tool(TOOL)


def test_exported_teacher_equals_teacher_inside_the_dino_model(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='DINO',
        backbone=dict(type='MaskedViT', img_size=32, patch_size=8, out_type='cls_token',
                      arch=ARCH),
        head=dict(type='DINOHead', in_channels=48, hidden_channels=64,
                  bottleneck_channels=16, num_prototypes=32),
        loss=dict(type='DINOLoss', num_prototypes=32, dim=16)))
    model.init_weights()
    # make teacher and student differ, as after training
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ckpt = str(tmp_path / 'epoch_1.pth')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {'epoch': 1}}, ckpt)
    out = _tool().extract_backbone(ckpt, str(tmp_path / 'backbone.pth'))

    vit = VisionTransformer(img_size=32, patch_size=8, out_type='cls_token', arch=ARCH)
    result = vit.load_state_dict(out['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    vit.eval()
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        teacher = model.teacher.module['backbone'](x)[-1]
        student = model.backbone(x)[-1]
        exported = vit(x)[-1]
    assert torch.equal(exported, teacher)
    assert not torch.allclose(exported, student)
