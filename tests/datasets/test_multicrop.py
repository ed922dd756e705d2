"""MultiCrop: view counts, sizes and per-view settings from config, solarize only on the
second global view, channel order and input checks (the laws and the bit-for-bit match with
torchvision: test_multicrop_laws.py)."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import TRANSFORMS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(autouse=True)
def _mmpretrain_scope():
    """The per-view pipelines are built by name, as inside a Runner with default_scope."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


def build(**kwargs):
    return TRANSFORMS.build(dict(type='MultiCrop', **kwargs))


def test_default_views_follow_dino():
    mc = build()
    assert [(law.size, law.scale, law.blur_prob, law.solarize_prob) for law in mc.laws] == \
        [(224, (0.4, 1.0), 1.0, 0.0), (224, (0.4, 1.0), 0.1, 0.2)] + \
        [(96, (0.05, 0.4), 0.5, 0.0)] * 10
    assert mc.color_jitter == (0.4, 0.4, 0.2, 0.1) and mc.color_jitter_prob == 0.8
    assert (mc.grayscale_prob, mc.flip_prob, mc.blur) == (0.2, 0.5, 'pil')


def test_solarize_applies_only_to_the_second_global_view():
    """Every random step switched off except solarize (p=1): view 2 is the solarized image,
    views 1, 3, 4 are the image itself."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    mc = build(num_global=2, num_local=2, global_size=20, local_size=20,
               global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), global_blur_probs=(0.0, 0.0),
               local_blur_prob=0.0, solarize_prob=1.0, color_jitter_prob=0.0,
               grayscale_prob=0.0, flip_prob=0.0, interpolation='bilinear')
    views = mc(dict(img=img.copy()))['img']
    assert len(views) == 4
    solarized = np.where(img < 128, img, 255 - img)
    np.testing.assert_array_equal(views[1], solarized)
    for i in (0, 2, 3):
        np.testing.assert_array_equal(views[i], img)


@pytest.mark.parametrize('num_local', [0, 3])
def test_shapes_and_view_count_through_packing(num_local):
    img = np.random.default_rng(1).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    mc = build(num_global=2, num_local=num_local, global_size=24, local_size=12)
    packer = TRANSFORMS.build(dict(type='PackInputs'))
    packed = packer(mc(dict(img=img)))
    views = packed['inputs']
    assert len(views) == 2 + num_local
    assert [tuple(v.shape) for v in views] == [(3, 24, 24)] * 2 + [(3, 12, 12)] * num_local
    assert all(v.dtype == torch.uint8 for v in views)
    # per-image randomness: the two global crops differ
    assert not torch.equal(views[0], views[1])


def test_demo_config_pipeline_through_a_dataloader():
    """The demo config's MultiCrop (sizes from the config) on digits, batched."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets',
                                   'fashion_mnist_demo.py'))
    crop = next(t for t in cfg.train_pipeline if t['type'] == 'MultiCrop')
    loader = Runner.build_dataloader(dict(
        batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='default_collate'),
        dataset=dict(type='SklearnDigits', image_size=cfg.image_size, num_train=8,
                     pipeline=cfg.train_pipeline)))
    batch = next(iter(loader))
    views = batch['inputs']
    g, n = crop['global_size'], crop['local_size']
    assert len(views) == crop['num_global'] + crop['num_local']
    assert [tuple(v.shape) for v in views] == \
        [(4, 3, g, g)] * crop['num_global'] + [(4, 3, n, n)] * crop['num_local']


def test_imagenet_config_pipeline_shapes():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets',
                                   'imagenet_multicrop.py'))
    crop = next(t for t in cfg.train_pipeline if t['type'] == 'MultiCrop')
    img = np.random.default_rng(2).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    views = TRANSFORMS.build(crop)(dict(img=img))['img']
    assert [v.shape for v in views] == [(224, 224, 3)] * 2 + [(96, 96, 3)] * 10


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match='num_global=0'):
        build(num_global=0)
    with pytest.raises(ValueError, match='num_local'):
        build(num_local=-1)
    with pytest.raises(ValueError, match='local_scale'):
        build(local_scale=(0.5, 0.1))




def test_channel_order_and_image_checks():
    """'rgb' on an RGB image makes the channel-reversed views of 'bgr' on the BGR image
    (the colour operations see the same colours); a 2-D image counts as grey."""
    rgb = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    np.random.seed(0)
    from_rgb = build(num_local=2, channel_order='rgb')(dict(img=rgb.copy()))['img']
    np.random.seed(0)
    from_bgr = build(num_local=2)(dict(img=rgb[..., ::-1].copy()))['img']
    for a, b in zip(from_rgb, from_bgr):
        np.testing.assert_array_equal(a, b[..., ::-1])
    grey = build(num_local=0, global_size=8)(dict(img=rgb[..., 0].copy()))['img']
    assert all(v.shape == (8, 8, 3) and (v == v[..., :1]).all() for v in grey)
    with pytest.raises(ValueError, match=r'HxWx3 uint8 image, got shape \(40, 30, 4\)'):
        build()(dict(img=np.zeros((40, 30, 4), np.uint8)))
    with pytest.raises(ValueError, match='channel_order'):
        build(channel_order='hsv')
