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
from tiny_dino_cfg import ROOT, tiny_dino_cfg

from mmselfsup_vmf.engine.hooks import CheckpointMatchHook
from mmselfsup_vmf.engine.hooks.checkpoint_check import state_dict_mismatch


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
    # the same 2-epoch schedule (a longer one is refused: tests/tools/test_train_first_contact.py)
    path = dump(tiny_dino_cfg(tmp_path, epochs=2), tmp_path / 'same.py')
    runner = load_train_tool().main([path, '--work-dir', str(tmp_path / 'w'),
                                     '--resume', vit_checkpoint])
    assert runner.iter == 4 and any(isinstance(h, CheckpointMatchHook) for h in runner.hooks)


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


# ----------------------------------------------------------------------------- head / loss
def test_negative_prototypes_through_tools_train(tmp_path):
    """Reproduction: ``--cfg-options model.head.num_prototypes=-1``."""
    path = dump(tiny_dino_cfg(tmp_path / 'w', epochs=1), tmp_path / 'cfg.py')
    with pytest.raises(ValueError) as excinfo:
        load_train_tool().main([path, '--cfg-options', 'model.head.num_prototypes=-1'])
    assert one_line(excinfo) == ('model.head.num_prototypes must be an integer >= 1 or None, '
                                 'got -1')


@pytest.mark.parametrize('method, key, value, message', [
    ('dino', 'head.bottleneck_channels', 0,
     'model.head.bottleneck_channels must be an integer >= 1, got 0'),
    ('dino', 'head.hidden_channels', -5, 'model.head.hidden_channels must be an integer >= 1, '
     'got -5'),
    ('dino', 'head.num_layers', 0, 'model.head.num_layers must be an integer >= 1, got 0'),
    ('dino', 'head.in_channels', 64.5, 'model.head.in_channels must be an integer >= 1, '
     'got 64.5'),
    ('dino', 'loss.num_prototypes', 0, 'model.loss.num_prototypes must be an integer >= 1, '
     'got 0'),
    ('dino', 'loss.student_temp', 0.0, 'model.loss.student_temp must be a finite number > 0, '
     'got 0.0'),
    ('dino', 'loss.center_momentum', 1.5, 'model.loss.center_momentum must be a number in '
     '[0, 1], got 1.5'),
    ('dino', 'loss.centering', 'mean', "model.loss.centering must be one of ('logit', "
     "'probability', 'none'), got 'mean'"),
    ('dino_vmf', 'loss.dim', 1, 'model.loss.dim must be an integer >= 2, got 1'),
    ('dino_vmf', 'loss.approximation', 'taylor', "model.loss.approximation must be one of "
     "('exact', 'debye'), got 'taylor'"),
    ('ibot', 'patch_loss.num_prototypes', -3, 'model.patch_loss.num_prototypes must be an '
     'integer >= 1, got -3'),
    ('dino', 'teacher_temp.start', 0.0, 'model.teacher_temp.start must be a finite number > 0, '
     'got 0.0'),
    ('dino_vmf', 'teacher_temp.end', -0.04, 'model.teacher_temp.end must be a finite number '
     '> 0, got -0.04'),
    ('ibot', 'teacher_temp.warmup_epochs', -1, 'model.teacher_temp.warmup_epochs must be an '
     'integer >= 0, got -1'),
    ('ibot', 'teacher_patch_temp.start_epoch', 1.5, 'model.teacher_patch_temp.start_epoch '
     'must be an integer >= 0, got 1.5'),
    ('dino', 'teacher_temp.warmup', 3, "model.teacher_temp takes ['end', 'start', "
     "'warmup_epochs'], got unknown keys ['warmup']"),
    ('simdino', 'loss.eps', 0.0, 'model.loss.eps (SimDINOLoss, = ε²) must be > 0, got 0.0'),
])
def test_head_and_loss_arguments_name_the_config_key(method, key, value, message):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', method, 'demo_fashion-mnist.py'))
    cfg.merge_from_dict({f'model.{key}': value})
    with pytest.raises(ValueError) as excinfo:
        MODELS.build(cfg.model)
    assert one_line(excinfo) == message


# ----------------------------------------------------------------------------- tools / hooks
def test_train_tool_with_a_missing_config(tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        load_train_tool().main([str(tmp_path / 'nope.py')])
    assert str(excinfo.value) == f'error: config file {tmp_path / "nope.py"} does not exist'


@pytest.mark.parametrize('cfg, message', [
    (dict(type='DivergenceGuardHook', check_interval=0),
     'DivergenceGuardHook: check_interval must be an integer >= 1, got 0'),
    (dict(type='SeededDataset', max_bad_fraction=2.0, dataset=dict(
        type='SklearnDigits', num_train=8)),
     'train_dataloader.dataset.max_bad_fraction must be in [0, 1], got 2.0'),
])
def test_guard_settings_out_of_range(cfg, message):
    from mmpretrain.registry import HOOKS
    registry = HOOKS if cfg['type'].endswith('Hook') else DATASETS
    with pytest.raises(ValueError) as excinfo:
        registry.build(cfg)
    assert one_line(excinfo) == message
