"""configs/benchmarks/linear_probe: DINO's linear evaluation with a frozen backbone."""
import os.path as osp
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.models import VisionTransformer
from mmpretrain.registry import MODELS
from testing_utils import load_tool as _load_tool  # noqa: E402
from testing_utils import mmengine_messages  # noqa: E402

from mmselfsup_vmf.evaluation.linear_probe import LinearProbeViT

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(ROOT, 'configs', 'benchmarks', 'linear_probe')
VIT_S = osp.join(CONFIG_DIR, 'vit-small-p16_linear-4blocks_8xb128-coslr-100e_in1k.py')
VIT_B = osp.join(CONFIG_DIR, 'vit-base-p16_linear-1block-avgpool_8xb128-coslr-100e_in1k.py')
DEMO = osp.join(CONFIG_DIR, 'dino-demo-vit-p7_linear_1xb256-coslr-10e_fashion-mnist.py')
TINY12 = dict(embed_dims=24, num_layers=12, num_heads=2, feedforward_channels=48)


def load_extractor():
    return _load_tool('tools/model_converters/extract_backbone.py')




def randomize(module, seed, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


def export_teacher(teacher, tmp_path):
    """Write a pre-training checkpoint holding ``teacher`` and export its backbone."""
    state = OrderedDict(('teacher.module.backbone.' + k, v)
                        for k, v in teacher.state_dict().items())
    state.update(('backbone.' + k, torch.zeros_like(v)) for k, v in teacher.state_dict().items())
    torch.save(dict(meta={}, state_dict=state), tmp_path / 'pretrain.pth')
    out = str(tmp_path / 'backbone.pth')
    load_extractor().extract_backbone(str(tmp_path / 'pretrain.pth'), out)
    return out


def dino_reference_feature(vit, x, n, avgpool):
    """DINO's get_intermediate_layers(x, n) + concat: the raw tokens of every block from
    mmpretrain's own forward, each normalised with the final LayerNorm's parameters."""
    raw = VisionTransformer(arch=vit.arch_settings, img_size=vit.img_size, patch_size=16,
                            out_type='raw', final_norm=False,
                            out_indices=list(range(vit.num_layers)))
    raw.load_state_dict({k: v for k, v in vit.state_dict().items() if not k.startswith('ln1')})
    raw.eval()
    with torch.no_grad():
        blocks = raw(x)[-n:]
    ln = [F.layer_norm(t.double(), (t.shape[-1], ), vit.ln1.weight.double(),
                       vit.ln1.bias.double(), 1e-6) for t in blocks]
    feats = [t[:, 0] for t in ln]
    if avgpool:
        feats.append(ln[-1][:, 1:].mean(1))
    return torch.cat(feats, dim=-1)


# --------------------------------------------------------------------------- ImageNet
def test_imagenet_configs_follow_dino_eval_linear():
    small, base = Config.fromfile(VIT_S), Config.fromfile(VIT_B)
    assert 'mmselfsup_vmf.evaluation.linear_probe' in small.custom_imports.imports
    for cfg, arch, n, avgpool in ((small, 'deit-small', 4, False), (base, 'base', 1, True)):
        b = cfg.model.backbone
        assert (b.type, b.arch, b.n_last_blocks, b.avgpool_patch_tokens) == (
            'LinearProbeViT', arch, n, avgpool)
        assert b.frozen_stages == 12 and b.init_cfg.type == 'Pretrained'
        assert cfg.model.head.in_channels == 1536  # 4 x 384 and 2 x 768
        assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.004, momentum=0.9,
                                                   weight_decay=0.0)
        assert cfg.train_cfg.max_epochs == 100 and cfg.train_dataloader.batch_size == 128
        assert cfg.param_scheduler[0].type == 'CosineAnnealingLR'
        assert cfg.param_scheduler[0].eta_min == 0.0
        resize = cfg.val_dataloader.dataset.pipeline[1]
        assert (resize.type, resize.scale, resize.interpolation) == ('ResizeEdge', 256, 'bicubic')
    # The real backbones produce exactly the head's input width.
    init_default_scope('mmpretrain')
    for cfg in (small, base):
        backbone_cfg = cfg.model.backbone.copy()
        backbone_cfg.pop('init_cfg')
        assert MODELS.build(backbone_cfg).feat_dim == cfg.model.head.in_channels


@pytest.mark.parametrize('n,avgpool', [(4, False), (1, True), (2, True)])
def test_linear_probe_vit_is_dinos_feature(n, avgpool):
    vit = randomize(LinearProbeViT(arch=TINY12, img_size=32, patch_size=16, n_last_blocks=n,
                                   avgpool_patch_tokens=avgpool), seed=n)
    vit.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (feat, ) = vit(x)
    assert feat.shape == (3, 24 * (n + avgpool)) and vit.feat_dim == feat.shape[1]
    assert torch.allclose(feat.double(), dino_reference_feature(vit, x, n, avgpool),
                          atol=1e-5)


def test_linear_probe_vit_rejects_bad_arguments():
    with pytest.raises(ValueError, match='n_last_blocks must be in'):
        LinearProbeViT(arch=TINY12, n_last_blocks=13)
    with pytest.raises(ValueError, match='sets out_indices itself'):
        LinearProbeViT(arch=TINY12, out_indices=(11, ))
    with pytest.raises(ValueError, match='final_norm=True'):
        LinearProbeViT(arch=TINY12, final_norm=False)


def test_imagenet_probe_loads_the_export_and_trains_only_the_head(tmp_path):
    teacher = randomize(VisionTransformer(arch=TINY12, img_size=224, patch_size=16), 1)
    path = export_teacher(teacher, tmp_path)
    cfg = Config.fromfile(VIT_S)
    cfg.model.backbone.arch = TINY12
    cfg.model.backbone.img_size = 32
    cfg.model.backbone.init_cfg.checkpoint = path
    cfg.model.head.in_channels = 4 * 24
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    with mmengine_messages() as messages:
        model.init_weights()
    assert not [m for m in messages if 'do not match' in m or 'missing keys' in m
                or 'unexpected key' in m], messages
    assert torch.equal(model.backbone.layers[5].attn.qkv.weight, teacher.layers[5].attn.qkv.weight)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'head.fc.weight', 'head.fc.bias'}


# --------------------------------------------------------------------------- demo
def write_idx(path, array, magic):
    header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    """Fashion-MNIST idx files with 40 train / 20 test random 28x28 images."""
    root = tmp_path / 'fmnist'
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (('train', 40), ('t10k', 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, :, :labels.max() + 1] = 0
        images[np.arange(n), :, labels] = 255  # a class-dependent bright column
        write_idx(root / f'{split}-images-idx3-ubyte', images, 0x00000803)
        write_idx(root / f'{split}-labels-idx1-ubyte', labels, 0x00000801)
    return str(root)


def test_demo_config_runs_a_few_iterations(tmp_path, tiny_fashion_mnist):
    cfg = Config.fromfile(DEMO)
    init_default_scope('mmpretrain')
    backbone_cfg = cfg.model.backbone.copy()
    backbone_cfg.pop('init_cfg')
    backbone_cfg.pop('frozen_stages')
    teacher = randomize(MODELS.build(backbone_cfg), 2, scale=0.05)
    path = export_teacher(teacher, tmp_path)

    cfg.model.backbone.init_cfg.checkpoint = path
    for loader, n in (('train_dataloader', 40), ('val_dataloader', 20)):
        cfg[loader].dataset.data_root = tiny_fashion_mnist
        cfg[loader].dataset.num_samples = n
        cfg[loader].batch_size = 16
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg.max_epochs = 2
    cfg.train_cfg.val_interval = 2
    cfg.param_scheduler[0].T_max = 2
    cfg.param_scheduler[0].end = 2
    cfg.optim_wrapper.optimizer.lr = 0.1  # 6 steps on 40 images: the demo's 1.0 oscillates
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 6  # 2 epochs x ceil(40 / 16)
    acc = runner.message_hub.get_scalar('val/accuracy/top1').current()
    assert 0.0 <= acc <= 100.0
    backbone = runner.model.backbone.state_dict()
    for key, value in teacher.state_dict().items():
        assert torch.equal(backbone[key], value), key  # loaded and kept frozen
    losses, _ = runner.message_hub.get_scalar('train/loss').data
    assert len(losses) == 6 and losses[-1] < losses[0]  # the head learns
