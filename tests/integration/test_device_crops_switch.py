"""``device_crops``: one config key moves any method's MultiCrop onto the data preprocessor.

Per method, the switched demo config trains one step on the CPU (``device_crops='cpu'``),
with the masks of the masked methods; the switched DINO demo equals the hand-written
``configs/dino/demo_fashion-mnist_device-crops.py``; tools/train.py applies the key from
``--cfg-options``; a missing kornia or accelerator is a one-line error, not a silent
change of augmentation law."""
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.device import get_device
from mmengine.runner import Runner
from testing_utils import load_tool
from tiny_dino_cfg import ROOT, tiny_method_cfg

from mmselfsup_vmf.datasets.transforms.device_multicrop import use_device_crops

METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino', 'simdinov2')
MASKED = ('ibot', 'ibot_vmf', 'simdinov2')


def demo(method):
    return Config.fromfile(osp.join(ROOT, 'configs', method, 'demo_fashion-mnist.py'))


@pytest.mark.parametrize('method', METHODS)
def test_switched_demo_config_trains_one_step(method, tmp_path):
    cfg = tiny_method_cfg(method, tmp_path, num_train=16, batch=16)
    crop = dict(cfg.train_dataloader.dataset.dataset.pipeline[0])
    cfg.device_crops = 'cpu'
    use_device_crops(cfg)
    pipeline = cfg.train_dataloader.dataset.dataset.pipeline
    assert [t.type for t in pipeline] == ['DeviceMultiCropInput', 'PackInputs']
    assert pipeline[0].size == 28 and set(pipeline[1].meta_keys) >= {'img_shape', 'aug_seed'}
    pre = cfg.model.data_preprocessor
    assert pre.type == ('MaskedMultiCropDataPreprocessor' if method in MASKED
                        else 'MultiCropDataPreprocessor')
    assert all(pre[k] == v for k, v in crop.items() if k != 'type')  # the same laws
    assert cfg.train_dataloader.collate_fn.type == ('masked_collate' if method in MASKED
                                                    else 'multicrop_collate')
    cfg.train_cfg.max_epochs = 1
    runner = Runner.from_cfg(cfg)
    outputs = []
    forward = runner.model.data_preprocessor.forward
    packed = []  # the views' parameters come packed from the loader

    def record(data, training=False):
        packed.append(data.get('crop_params'))
        outputs.append(forward(data, training))
        return outputs[-1]
    runner.model.data_preprocessor.forward = record
    runner.train()
    assert runner.iter == 1
    assert packed[0].shape == (16, 4, 18) and packed[0].dtype == torch.float32
    views = outputs[0]['inputs']
    assert [tuple(v.shape) for v in views] == [(16, 3, 28, 28)] * 2 + [(16, 3, 14, 14)] * 2
    assert views[0].dtype == torch.float32
    if method in MASKED:
        mask = outputs[0]['data_samples'][0].mask
        assert mask.shape == (2, 4, 4) and mask.dtype == torch.bool
    assert torch.isfinite(torch.tensor(runner.message_hub.log_scalars['train/loss'].current()))


def test_switched_dino_demo_is_the_hand_written_device_config():
    cfg = demo('dino')
    cfg.device_crops = 'cpu'
    use_device_crops(cfg)
    ref = Config.fromfile(osp.join(ROOT, 'configs', 'dino',
                                   'demo_fashion-mnist_device-crops.py'))
    assert cfg.train_dataloader.dataset.dataset.pipeline == \
        ref.train_dataloader.dataset.dataset.pipeline
    ours, theirs = cfg.model.data_preprocessor, ref.model.data_preprocessor
    assert {k: ours[k] for k in theirs} == dict(theirs)
    assert set(ours) - set(theirs) <= {'num_global', 'num_local', 'global_size', 'local_size',
                                       'global_scale', 'local_scale', 'global_blur_probs',
                                       'local_blur_prob', 'interpolation', 'mean', 'std',
                                       'to_rgb', 'solarize_prob'}


def test_imagenet_recipes_switch_with_their_masks_and_384_px_inputs():
    for config, masked in (('dino/vit-s16_8xb64.py', False), ('ibot/vit-s16_8xb64.py', True),
                           ('simdinov2/vit-b16_8xb128.py', True)):
        cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
        crop = dict(cfg.train_dataloader.dataset.dataset.pipeline[1])
        mask_keys = {k: v for k, v in cfg.model.data_preprocessor.items() if 'mask' in k}
        use_device_crops(cfg, check_device=False)
        pipeline = cfg.train_dataloader.dataset.dataset.pipeline
        assert [t.type for t in pipeline] == ['LoadImageFromFile', 'DeviceMultiCropInput',
                                              'PackInputs'] and pipeline[1].size == 384
        pre = cfg.model.data_preprocessor
        assert pre.type.startswith('Masked') == masked
        assert {k: pre[k] for k in mask_keys} == mask_keys
        assert pre.get('blur', 'pil') == crop.get('blur', 'pil') and pre.to_rgb


def test_train_tool_applies_the_cfg_option():
    tool = load_tool('tools/train.py', 'train_tool')
    config = osp.join(ROOT, 'configs', 'ibot', 'demo_fashion-mnist.py')
    args = tool.parse_args([config, '--cfg-options', 'device_crops=cpu'])
    cfg = tool.merge_args(Config.fromfile(config), args)
    assert cfg.model.data_preprocessor.type == 'MaskedMultiCropDataPreprocessor'
    args = tool.parse_args([config])
    assert tool.merge_args(Config.fromfile(config), args).model.data_preprocessor.type == \
        'MaskedSelfSupDataPreprocessor'


def test_missing_kornia_device_or_multicrop_are_one_line_errors(monkeypatch):
    cfg = demo('simdino')
    if get_device() == 'cpu':
        cfg.device_crops = True
        with pytest.raises(RuntimeError, match="device_crops='cpu'"):
            use_device_crops(cfg)
    else:
        print('accelerator present: the missing-device error is not reachable here')
    cfg.device_crops = 'gpu'
    with pytest.raises(ValueError, match='device_crops must be one of'):
        use_device_crops(cfg)
    cfg.device_crops = 'cpu'
    cfg.device_crops_size = None
    with pytest.raises(ValueError, match='device_crops_size'):
        use_device_crops(cfg)
    cfg = demo('simdino')
    cfg.train_dataloader.dataset.dataset.pipeline = [dict(type='PackInputs')]
    with pytest.raises(ValueError, match='no MultiCrop .* train_dataloader.dataset.dataset'):
        use_device_crops(cfg, check_device=False)
    monkeypatch.setitem(sys.modules, 'kornia', None)  # what Python does for a missing package
    with pytest.raises(ImportError, match='device-aug'):
        use_device_crops(demo('dino'), check_device=False)
