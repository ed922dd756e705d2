"""Bad input -> one clear line naming the problem (ValueError / TypeError /
FileNotFoundError), never a raw traceback from deep inside torch or mmengine.

Per-GPU batch 1: DINO does not need >= 2 images per device (no batch statistics in its
loss); ``tests/models/algorithms/test_dino.py::test_batch_of_one_works_for_dino`` checks that
it trains. Methods that do need it (SimDINO's coding rate) test it in their own files.
"""
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, MODELS

from mmselfsup_vmf.engine.hooks import CheckpointMatchHook
from mmselfsup_vmf.engine.hooks.checkpoint_check import state_dict_mismatch
from tiny_dino_cfg import ROOT, tiny_dino_cfg


def one_line(excinfo):
    message = str(excinfo.value)
    assert '\n' not in message.strip(), message
    return message


# ----------------------------------------------------------------------------- data root
@pytest.mark.parametrize('kind', ['missing', 'empty'])
def test_fashion_mnist_missing_or_empty_root(tmp_path, kind):
    root = tmp_path / 'nowhere' if kind == 'missing' else tmp_path
    with pytest.raises(FileNotFoundError) as excinfo:
        DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(root)))
    message = one_line(excinfo)
    assert str(root) in message and 'missing or empty' in message
    assert 'dataset-fashion-mnist' in message  # says how to fix it


def test_fashion_mnist_root_without_the_label_file(tmp_path):
    (tmp_path / 'train-images-idx3-ubyte').write_bytes(
        (0x803).to_bytes(4, 'big') + (1).to_bytes(4, 'big') + (2).to_bytes(4, 'big') * 2
        + bytes(4))
    with pytest.raises(FileNotFoundError) as excinfo:
        DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(tmp_path)))
    assert 'train-labels-idx1-ubyte' in one_line(excinfo)


def test_demo_config_with_a_missing_root_fails_when_the_loader_is_built(tmp_path):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dino', 'demo_fashion-mnist.py'))
    loader = cfg.train_dataloader
    loader.dataset.dataset.data_root = str(tmp_path / 'no-data')
    with pytest.raises(FileNotFoundError) as excinfo, \
            DefaultScope.overwrite_default_scope('mmpretrain'):
        Runner.build_dataloader(loader)
    message = one_line(excinfo)
    assert str(tmp_path / 'no-data') in message and 'Fashion-MNIST' in message


# ----------------------------------------------------------------------------- crops
def test_zero_global_crops():
    with pytest.raises(ValueError) as excinfo:
        MODELS.build(dict(type='DINO', num_global_views=0,
                          backbone=dict(type='VisionTransformer', arch='deit-tiny'),
                          head=dict(type='DINOHead', in_channels=192, num_prototypes=8),
                          loss=dict(type='DINOLoss', num_prototypes=8)))
    assert 'num_global_views' in one_line(excinfo)
    from mmpretrain.registry import TRANSFORMS
    with pytest.raises(ValueError) as excinfo:
        TRANSFORMS.build(dict(type='MultiCrop', num_global=0, num_local=4))
    assert 'num_global=0' in one_line(excinfo)


# ----------------------------------------------------------------------------- checkpoints
def load_train_tool():
    spec = importlib.util.spec_from_file_location('train_tool_bad_input',
                                                  osp.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dump(cfg, path):
    cfg.dump(str(path))
    return str(path)


@pytest.fixture(scope='module')
def vit_checkpoint(tmp_path_factory):
    """Two epochs (4 iterations) of the tiny ViT DINO through tools/train.py."""
    tmp = tmp_path_factory.mktemp('vit_ckpt')
    cfg = dump(tiny_dino_cfg(tmp / 'work', epochs=2), tmp / 'vit.py')
    load_train_tool().main([cfg])
    return str(tmp / 'work' / 'epoch_2.pth')


@pytest.mark.parametrize('other', ['resnet', 'bigger_k'])
def test_resume_from_another_models_checkpoint(tmp_path, vit_checkpoint, other):
    if other == 'resnet':
        cfg = tiny_dino_cfg(tmp_path, backbone='resnet', epochs=3)
        expected = r'missing keys \(backbone\.conv1.*unexpected keys \(backbone\.cls_token'
    else:
        cfg = tiny_dino_cfg(tmp_path, k=128, epochs=3)
        expected = (r'keys with another shape \(.*last_layer.*: checkpoint \(64, 1\) vs '
                    r'model \(128, 1\)')
    path = dump(cfg, tmp_path / 'other.py')
    with pytest.raises(ValueError, match=expected) as excinfo:
        load_train_tool().main([path, '--work-dir', str(tmp_path / 'w'),
                                '--resume', vit_checkpoint])
    message = one_line(excinfo)
    assert message.startswith(f'cannot resume from {vit_checkpoint}')
    assert 'different model than this DINO' in message


def test_resume_of_the_same_model_passes_the_check(tmp_path, vit_checkpoint):
    path = dump(tiny_dino_cfg(tmp_path, epochs=3), tmp_path / 'same.py')
    runner = load_train_tool().main([path, '--work-dir', str(tmp_path / 'w'),
                                     '--resume', vit_checkpoint])
    assert runner.iter == 6 and any(isinstance(h, CheckpointMatchHook) for h in runner.hooks)


def test_load_from_a_checkpoint_sharing_no_key(tmp_path):
    ckpt = tmp_path / 'foreign.pth'
    torch.save({'state_dict': torch.nn.Linear(3, 2).state_dict()}, str(ckpt))
    cfg = tiny_dino_cfg(tmp_path, epochs=2)
    cfg.load_from = str(ckpt)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(CheckpointMatchHook())
    with pytest.raises(ValueError, match='no key of the checkpoint matches this DINO') \
            as excinfo:
        runner.train()
    assert str(ckpt) in one_line(excinfo)


def test_mismatch_helper_revises_module_prefix():
    model = {'a.w': torch.zeros(2, 3), 'b': torch.zeros(1)}
    ckpt = {'module.a.w': torch.zeros(3, 2), 'module.c': torch.zeros(1)}
    missing, unexpected, wrong = state_dict_mismatch(model, ckpt)
    assert missing == ['b'] and unexpected == ['c']
    assert wrong == [('a.w', (3, 2), (2, 3))]
