"""MultiCrop (mmpretrain MultiView with DINO's per-view pipelines): view counts and sizes
from config, per-view augmentation settings, solarize only on the second global view."""
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


def settings(pipeline):
    """{transform type: its config-relevant attributes} of one view's Compose."""
    out = {}
    for t in pipeline.transforms:
        name = type(t).__name__
        if name == 'RandomResizedCrop':
            out[name] = (t.scale, tuple(t.crop_ratio_range))
        elif name == 'RandomApply':
            inner = t.transforms.transforms[0]
            out['ColorJitter'] = (t.prob, type(inner).__name__)
        elif name in ('GaussianBlur', 'Solarize', 'RandomGrayscale'):
            out[name] = t.prob
        elif name == 'RandomFlip':
            out[name] = t.prob
    return out


def test_default_views_follow_dino():
    mc = build()
    assert mc.num_views == [1, 1, 10] and len(mc.transforms) == 12
    first, second, local = (settings(p) for p in mc.pipelines)
    assert first['RandomResizedCrop'] == ((224, 224), (0.4, 1.0))
    assert second['RandomResizedCrop'] == ((224, 224), (0.4, 1.0))
    assert local['RandomResizedCrop'] == ((96, 96), (0.05, 0.4))
    # blur 1.0 / 0.1 / 0.5; solarize 0.2 on the second global view only
    assert (first['GaussianBlur'], second['GaussianBlur'], local['GaussianBlur']) == \
        (1.0, 0.1, 0.5)
    assert (first['Solarize'], second['Solarize'], local['Solarize']) == (0.0, 0.2, 0.0)
    for s in (first, second, local):
        assert s['ColorJitter'] == (0.8, 'ColorJitter')
        assert s['RandomGrayscale'] == 0.2 and s['RandomFlip'] == 0.5
    jitter = mc.pipelines[0].transforms[2].transforms.transforms[0]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == \
        ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))


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


def gaussian_blur_by_hand(img, sigma):
    """torchvision's GaussianBlur(kernel_size=9) of an (H, W, C) uint8 array in float64:
    separable kernel exp(-x^2 / (2 sigma^2)) on x = -4..4, normalised, reflect padding."""
    x = np.arange(-4, 5, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(img.astype(np.float64), ((4, 4), (4, 4), (0, 0)), mode='reflect')
    rows = sum(kernel[i] * padded[i:i + img.shape[0]] for i in range(9))
    return sum(kernel[i] * rows[:, i:i + img.shape[1]] for i in range(9))


def test_kernel9_blur_is_torchvisions_dinov2_blur():
    from mmselfsup_vmf.datasets.transforms.multicrop import blur_transform
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    blur = TRANSFORMS.build(blur_transform('kernel9', 1.0))
    torch.manual_seed(1)  # sigma = 1.54
    out = blur(dict(img=img.copy()))['img']
    torch.manual_seed(1)
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()  # how torchvision draws sigma
    expected = gaussian_blur_by_hand(img, sigma)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0  # uint8 rounding
    assert np.abs(out.astype(np.float64) - img).mean() > 5  # it really blurred
    # applied with the given probability (binomial: 400 draws, p = 0.3, 4 sigma)
    blur = TRANSFORMS.build(blur_transform('kernel9', 0.3))
    np.random.seed(0)
    changed = [not np.array_equal(blur(dict(img=img.copy()))['img'], img) for _ in range(400)]
    assert abs(np.mean(changed) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 400)
    # and it is what MultiCrop(blur='kernel9') puts in every view
    mc = build(num_global=2, num_local=1, blur='kernel9')
    for view in mc.pipelines:
        names = [type(t).__name__ for t in view.transforms]
        assert 'GaussianBlur' not in names and names.count('RandomApply') == 2
    with pytest.raises(ValueError, match='blur'):
        build(blur='box')
