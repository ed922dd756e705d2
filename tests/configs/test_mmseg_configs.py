"""configs/benchmarks/mmseg: ADE20K UperNet and frozen linear head on an exported backbone.

The configs are read with ``Config.fromfile`` and built with mmseg's registry. For speed the
ViT-B/16 is shrunk to 48-d (still 12 blocks, patch 16, 512x512 inputs) and the heads'
widths follow; everything else is the real config (the real ViT-B is meant for GPUs).
"""
import os.path as osp
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.models import VisionTransformer
from testing_utils import load_tool as _load_tool  # noqa: E402
from testing_utils import mmengine_messages  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(ROOT, 'configs', 'benchmarks', 'mmseg')
CONFIGS = {
    'upernet': osp.join(CONFIG_DIR, 'vit-base-p16_upernet_8xb2-160k_ade20k-512x512.py'),
    'linear': osp.join(CONFIG_DIR, 'vit-base-p16_linear-frozen_4xb4-160k_ade20k-512x512.py'),
}
EMBED = 48
TINY = dict(embed_dims=EMBED, num_layers=12, num_heads=3, feedforward_channels=2 * EMBED)


def load_extractor():
    return _load_tool('tools/model_converters/extract_backbone.py')




@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A pre-training checkpoint (teacher at 224 px, 14x14 pos-embed) -> exported backbone."""
    tmp = tmp_path_factory.mktemp('export')
    teacher = VisionTransformer(arch=TINY, img_size=224, patch_size=16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    state = OrderedDict(('teacher.module.backbone.' + k, v)
                        for k, v in teacher.state_dict().items())
    state.update(('backbone.' + k, torch.zeros_like(v)) for k, v in teacher.state_dict().items())
    state['teacher.module.backbone.mask_token'] = torch.zeros(1, 1, EMBED)
    torch.save(dict(meta=dict(iter=10), state_dict=state), tmp / 'pretrain.pth')
    load_extractor().extract_backbone(str(tmp / 'pretrain.pth'), str(tmp / 'backbone.pth'))
    return str(tmp / 'backbone.pth'), teacher.state_dict()


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    """ADE20K folder layout with random 512x512 images and labels 0..150 (0 = ignore)."""
    root = tmp_path_factory.mktemp('ade')
    rng = np.random.default_rng(0)
    for split, n in (('training', 2), ('validation', 1)):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / 'images' / split / f'{i}.jpg'),
                        rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
            label = rng.integers(0, 151, (64, 64), dtype=np.uint8)
            label = cv2.resize(label, (512, 512), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / 'annotations' / split / f'{i}.png'), label)
    return str(root)


def tiny_cfg(name, checkpoint, data_root=None, work_dir=None):
    cfg = Config.fromfile(CONFIGS[name])
    cfg.model.backbone.arch = TINY
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    head = cfg.model.decode_head
    head.in_channels = [EMBED] * 4
    if name == 'upernet':
        cfg.model.neck.embed_dim = EMBED
        head.channels = 32
        cfg.model.auxiliary_head.in_channels = EMBED
        cfg.model.auxiliary_head.channels = 16
    else:
        head.channels = 4 * EMBED
    if data_root is not None:
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].dataset.data_root = data_root
            cfg[loader].num_workers = 0
            cfg[loader].persistent_workers = False
        cfg.train_dataloader.batch_size = 2
        cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=100)
        cfg.default_hooks.checkpoint.interval = 1
        cfg.default_hooks.logger.interval = 1
    if work_dir is not None:
        cfg.work_dir = work_dir
    return cfg


def reference_pos_embed(pos_embed, src, dst):
    """CLS row kept, (src x src) grid resized bicubically (align_corners=False) to dst."""
    grid = pos_embed[:, 1:].reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(dst, dst), mode='bicubic', align_corners=False)
    return torch.cat((pos_embed[:, :1], grid.flatten(2).transpose(1, 2)), dim=1)


# --------------------------------------------------------------------------- structure
def test_upernet_config_is_the_ibot_recipe():
    cfg = Config.fromfile(CONFIGS['upernet'])
    assert {'mmpretrain.models', 'mmselfsup_vmf'} <= set(cfg.custom_imports.imports)
    b = cfg.model.backbone
    assert b.type == 'mmpretrain.VisionTransformer' and b.arch == 'base'
    assert (b.img_size, b.patch_size, tuple(b.out_indices)) == (512, 16, (3, 5, 7, 11))
    assert b.out_type == 'featmap' and b.drop_path_rate == 0.1
    assert b.init_cfg.type == 'Pretrained'
    assert cfg.model.neck.type == 'Feature2Pyramid' and cfg.model.neck.rescales == [4, 2, 1, 0.5]
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.channels == 768
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=8e-5, betas=(0.9, 0.999),
                                               weight_decay=0.05)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR']
    assert cfg.param_scheduler[0].end == 1500 and cfg.param_scheduler[1].power == 1.0


def test_linear_config_freezes_the_backbone():
    cfg = Config.fromfile(CONFIGS['linear'])
    b = cfg.model.backbone
    assert b.type == 'mmpretrain.VisionTransformer' and b.frozen_stages == 12
    head = cfg.model.decode_head
    assert head.type == 'FCNHead' and head.num_convs == 0 and head.channels == 3072
    assert head.input_transform == 'resize_concat' and 'auxiliary_head' not in cfg.model
    assert cfg.optim_wrapper.optimizer.lr == 8e-4 and cfg.train_dataloader.batch_size == 4


# --------------------------------------------------------------------------- loading
@pytest.mark.parametrize('name', ['upernet', 'linear'])
def test_export_loads_into_segmentor_with_no_key_mismatch(name, exported):
    from mmseg.registry import MODELS
    path, teacher_state = exported
    cfg = tiny_cfg(name, path)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    result = model.backbone.load_state_dict(dict(state), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []

    model = MODELS.build(cfg.model)  # the config's own path: init_cfg=Pretrained
    with mmengine_messages() as messages:
        model.init_weights()
    assert not [m for m in messages if 'do not match' in m or 'missing keys' in m
                or 'unexpected key' in m], messages
    backbone = model.backbone.state_dict()
    for key in ('cls_token', 'patch_embed.projection.weight', 'layers.11.attn.qkv.weight',
                'layers.0.ffn.layers.1.bias', 'ln1.weight'):
        assert torch.equal(backbone[key], teacher_state[key]), key
    assert backbone['pos_embed'].shape == (1, 1 + 32 * 32, EMBED)
    expected = reference_pos_embed(teacher_state['pos_embed'], 14, 32)
    assert torch.allclose(backbone['pos_embed'], expected, atol=1e-6)


def test_upernet_layer_wise_lr_decay(exported):
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    cfg = tiny_cfg('upernet', exported[0])
    init_default_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    group_of = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}

    def depth(name):  # BEiT/iBOT: embeddings 0, block i -> i + 1, the rest 13
        if name.startswith(('backbone.cls_token', 'backbone.pos_embed',
                            'backbone.patch_embed')):
            return 0
        if name.startswith('backbone.layers.'):
            return int(name.split('.')[2]) + 1
        return 13

    for name, param in model.named_parameters():
        group = group_of[id(param)]
        assert group['lr'] == pytest.approx(8e-5 * 0.65**(13 - depth(name)), rel=1e-9), name
        no_decay = param.ndim == 1 or name in ('backbone.cls_token', 'backbone.pos_embed')
        assert group['weight_decay'] == (0.0 if no_decay else 0.05), name


# --------------------------------------------------------------------------- run
@pytest.mark.slow  # 20-40 s each on 2 cores: 150-class losses at 512x512 + sliding-window val
@pytest.mark.parametrize('name', ['upernet', 'linear'])
def test_one_training_iteration_and_inference(name, exported, ade_root, tmp_path):
    from mmseg.apis import inference_model, init_model
    path, teacher_state = exported
    cfg = tiny_cfg(name, path, ade_root, str(tmp_path / 'work'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert np.isfinite(loss) and loss > 0
    trained = runner.model.backbone.state_dict()
    if name == 'linear':  # frozen: still exactly the exported teacher
        for key in ('layers.3.attn.qkv.weight', 'ln1.bias', 'cls_token'):
            assert torch.equal(trained[key], teacher_state[key]), key
        assert not any(p.requires_grad for p in runner.model.backbone.parameters())

    ckpt = tmp_path / 'work' / 'iter_1.pth'
    assert ckpt.is_file()
    model = init_model(cfg, str(ckpt), device='cpu')
    image = osp.join(ade_root, 'images', 'validation', '0.jpg')
    result = inference_model(model, image)
    pred = result.pred_sem_seg.data
    assert pred.shape == (1, 512, 512)
    assert int(pred.min()) >= 0 and int(pred.max()) < 150


# --------------------------------------------------------------------------- CPU demo configs
DEMO = {name: osp.join(CONFIG_DIR, f'demo-vit-p7_{kind}_1xb16-1k_fashion-mnist-mosaic-28x28.py')
        for name, kind in (('upernet', 'upernet'), ('linear', 'linear-frozen'))}


def test_demo_linear_config_has_the_ade20k_structure():
    cfg, ade = Config.fromfile(DEMO['linear']), Config.fromfile(CONFIGS['linear'])
    b, head = cfg.model.backbone, cfg.model.decode_head
    assert (b.img_size, b.patch_size, b.frozen_stages, b.arch.embed_dims) == (28, 7, 4, 64)
    for key in ('type', 'num_convs', 'input_transform', 'concat_input'):
        assert head[key] == ade.model.decode_head[key], key
    assert head.in_channels == [64] * 4 and head.num_classes == 11
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(28, 28), stride=(14, 14))
    assert 'PretrainedMatchHook' in [h['type'] for h in cfg.custom_hooks]


def test_demo_upernet_layer_wise_lr_decay():
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    cfg = Config.fromfile(DEMO['upernet'])
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    group_of = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}

    def depth(name):  # BEiT/iBOT with 4 blocks: embeddings 0, block i -> i + 1, the rest 5
        if name.startswith(('backbone.cls_token', 'backbone.pos_embed',
                            'backbone.patch_embed')):
            return 0
        if name.startswith('backbone.layers.'):
            return int(name.split('.')[2]) + 1
        return 5

    for name, param in model.named_parameters():
        assert group_of[id(param)]['lr'] == pytest.approx(1e-3 * 0.65**(5 - depth(name)),
                                                          rel=1e-9), name
