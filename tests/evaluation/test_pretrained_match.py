"""Our exported backbone given to a downstream config whose backbone does not fit is an error
naming the mismatch; a fitting one (also at another input size) loads.

The checkpoints are real: two tiny pre-training models built from the DINO demo config
(64-d, 4 blocks, patch 7) and a variant (32-d, 2 blocks, patch 4), saved with mmengine's
``save_checkpoint`` and exported by ``tools/model_converters/extract_backbone.py``.
"""
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import save_checkpoint
from mmpretrain.registry import MODELS
from testing_utils import ROOT, load_tool

from mmselfsup_vmf.evaluation.pretrained_check import check_pretrained_fits, describe_mismatch

PRETRAIN = osp.join(ROOT, 'configs', 'dino', 'demo_fashion-mnist.py')
PROBE = osp.join(ROOT, 'configs', 'benchmarks', 'linear_probe',
                 'dino-demo-vit-p7_linear_1xb256-coslr-10e_fashion-mnist.py')
SEG_LINEAR = osp.join(ROOT, 'configs', 'benchmarks', 'mmseg',
                      'vit-base-p16_linear-frozen_4xb4-160k_ade20k-512x512.py')
DEMO_ARCH = dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128)
OTHER_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def export(tmp, name, arch=None, patch_size=None):
    cfg = Config.fromfile(PRETRAIN).model
    if arch is not None:
        cfg.backbone.update(arch=arch, patch_size=patch_size)
        cfg.head.in_channels = arch['embed_dims']
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg)
    model.init_weights()
    with torch.no_grad():  # a teacher that differs from any fresh initialisation
        for p in model.teacher.module.backbone.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    save_checkpoint(dict(meta=dict(epoch=3, iter=279), state_dict=model.state_dict()),
                    str(tmp / f'{name}_epoch_3.pth'))
    out = str(tmp / f'{name}_backbone.pth')
    load_tool('tools/model_converters/extract_backbone.py').extract_backbone(
        str(tmp / f'{name}_epoch_3.pth'), out)
    return out, model.teacher.module.backbone.state_dict()


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('exports')
    return dict(demo=export(tmp, 'demo'), other=export(tmp, 'other', OTHER_ARCH, 4))


def test_every_downstream_config_checks_its_pretrained_backbone():
    # the downstream configs (linear probe, mmseg); small_scale/ holds pre-training configs
    configs = [p for p in glob.glob(osp.join(ROOT, 'configs', 'benchmarks', '*', '*.py'))
               if osp.basename(osp.dirname(p)) != 'small_scale']
    assert len(configs) >= 4
    for path in configs:
        hooks = [h['type'] for h in Config.fromfile(path).get('custom_hooks', [])]
        assert 'PretrainedMatchHook' in hooks, path


def test_mmpretrain_probe_refuses_another_vit_before_loading(exports, tmp_path):
    cfg = Config.fromfile(PROBE)
    cfg.model.backbone.init_cfg.checkpoint = exports['other'][0]
    cfg.work_dir = str(tmp_path)
    cfg.train_dataloader.dataset.num_samples = 20
    cfg.val_dataloader.dataset.num_samples = 20
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError) as err:
        runner.train()
    message = str(err.value)
    assert '\n' not in message and exports['other'][0] in message
    for part in ('embed_dims 32 vs 64', 'num_layers 2 vs 4', 'feedforward_channels 64 vs 128',
                 'patch_size (4, 4) vs (7, 7)'):
        assert part in message, message
    assert runner.iter == 0


def test_mmpretrain_probe_loads_the_fitting_export(exports):
    path, teacher = exports['demo']
    cfg = Config.fromfile(PROBE).model
    cfg.backbone.init_cfg.checkpoint = path
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg)
    check_pretrained_fits(model)  # no error
    model.init_weights()
    for key, value in teacher.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def seg_model(checkpoint, img_size, tmp_path):
    """The ADE20K linear config adapted to the demo backbone by the snippet of
    docs/downstream.md ("Another backbone"), read from the page."""
    import mmseg.models  # noqa: F401  (registers EncoderDecoder)
    from mmseg.registry import MODELS as SEG_MODELS
    with open(osp.join(ROOT, 'docs', 'downstream.md')) as f:
        page = f.read()
    section = page[page.index('### Another backbone'):]
    snippet = re.search(r"```python\n(_base_ = \['\./vit-base-p16_linear-frozen.*?)```",
                        section, re.S).group(1)
    config = tmp_path / 'demo_linear_frozen.py'
    config.write_text(snippet.replace("['./", f"['{osp.dirname(SEG_LINEAR)}/"))
    cfg = Config.fromfile(str(config))
    assert cfg.model.backbone.arch == DEMO_ARCH  # the docs' arch replaced 'base'
    cfg.model.backbone.update(img_size=img_size)
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)  # no process group
    init_default_scope('mmseg')
    return SEG_MODELS.build(cfg.model)


def test_mmseg_config_loads_the_fitting_export_at_another_size(exports, tmp_path):
    path, teacher = exports['demo']
    model = seg_model(path, 56, tmp_path)  # 8x8 patches instead of the 4x4 pre-trained
    check_pretrained_fits(model)  # the position embedding is resized: allowed
    model.init_weights()
    loaded = model.backbone.state_dict()
    assert loaded['pos_embed'].shape == (1, 65, 64)
    for key, value in teacher.items():
        if key not in ('pos_embed', 'mask_token'):
            assert torch.equal(loaded[key], value), key


def test_mmseg_config_refuses_another_vit(exports, tmp_path):
    path = exports['other'][0]
    model = seg_model(path, 56, tmp_path)
    with pytest.raises(ValueError, match=r'does not fit backbone \(VisionTransformer\): '
                                         r'ViT architecture .*embed_dims 32 vs 64'):
        check_pretrained_fits(model)


def test_registers_and_non_vit_layouts_are_named():
    vit = MODELS.build(dict(type='VisionTransformer', arch=DEMO_ARCH, img_size=28,
                            patch_size=7)).state_dict()
    with_registers = dict(vit, register_tokens=torch.zeros(1, 4, 64))
    assert describe_mismatch(with_registers, vit) == [
        'ViT architecture (checkpoint vs model): num_register_tokens 4 vs 0',
        'unexpected keys: register_tokens']
    resnet = MODELS.build(dict(type='ResNet', depth=18)).state_dict()
    problems = describe_mismatch(vit, resnet)
    assert problems[0].startswith('missing keys: conv1.weight, bn1.weight, bn1.bias, ...')
    assert problems[1].startswith('unexpected keys: cls_token, pos_embed, ')
    assert describe_mismatch(dict(vit, mask_token=torch.zeros(1, 1, 64)), vit) == \
        ['unexpected keys: mask_token']  # a checkpoint with a mask token into a plain ViT
    assert describe_mismatch(vit, dict(vit, mask_token=torch.zeros(1, 1, 64))) == []


def test_train_names_a_mismatched_export_before_looking_for_ade20k(exports, tmp_path,
                                                                   monkeypatch):
    """tools/train.py with the ADE20K config and no ADE20K on disk: the export is checked
    as soon as the model exists, so the mismatch is named (not the missing dataset)."""
    monkeypatch.chdir(tmp_path)  # no data/ade here
    train = load_tool('tools/train.py', 'train_tool')
    path = exports['demo'][0]
    with pytest.raises(ValueError, match=r'does not fit backbone \(VisionTransformer\): '
                                         r'ViT architecture .*embed_dims 64 vs 768'):
        train.main([SEG_LINEAR, '--work-dir', str(tmp_path / 'work'),
                    '--cfg-options', f'model.backbone.init_cfg.checkpoint={path}'])
    # nothing to check (random init): then the missing dataset is what is named
    with pytest.raises(FileNotFoundError, match=r"train_dataloader\.dataset\.data_root="
                                                r"'data/ade/ADEChallengeData2016' does not"):
        train.main([SEG_LINEAR, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                    'model.backbone.init_cfg=None'])
