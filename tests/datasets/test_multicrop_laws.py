"""MultiCrop's views against independent references: each view equals torchvision's PIL
operations (DINO's ``DataAugmentationDINO`` path) bit for bit given the same random values,
DINOv2's kernel-9 blur equals a float64 re-derivation, and the drawn laws match DINO's
(KS against mmpretrain's ``RandomResizedCrop``, binomial tests against DINO's probabilities,
measured on the outputs of crafted images)."""
import numpy as np
import pytest
from mmengine.registry import DefaultScope
from mmpretrain.registry import TRANSFORMS
from PIL import Image, ImageFilter, ImageOps
from scipy import stats
from testing_utils import assert_crop_law
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from mmselfsup_vmf.datasets.transforms.multicrop import blur_kernel9, make_view

P_MIN = 1e-3  # fixed seeds: a p-value below this means the law is wrong
OFF = dict(color_jitter_prob=0.0, grayscale_prob=0.0, global_blur_probs=(0.0, 0.0),
           local_blur_prob=0.0, solarize_prob=0.0, flip_prob=0.0)


@pytest.fixture(autouse=True)
def _mmpretrain_scope():
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


def torchvision_view(img, size, box, flip, order, factors, grey, sigma, solarize):
    """The same view through torchvision.transforms.functional + PIL, as DINO runs it."""
    top, left, h, w = box
    out = F.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
    out = F.hflip(out) if flip else out
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for op in order:
        out = ops[op](out, factors[op])
    out = F.rgb_to_grayscale(out, num_output_channels=3) if grey else out
    out = out.filter(ImageFilter.GaussianBlur(radius=sigma)) if sigma > 0 else out
    return ImageOps.solarize(out, 128) if solarize else out


def photo_like(rng, h=90, w=120):
    """Smooth colour gradients plus noise (every jitter operation changes it)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([200 * xx, 150 * yy + 50, 255 * (1 - xx * yy)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_views_are_torchvisions_operations_bit_for_bit():
    rng = np.random.default_rng(0)
    img = Image.fromarray(photo_like(rng))
    for _ in range(40):
        h, w = int(rng.integers(10, 90)), int(rng.integers(10, 120))
        box = (int(rng.integers(0, 91 - h)), int(rng.integers(0, 121 - w)), h, w)
        order = rng.permutation(4)[:int(rng.integers(0, 5))]
        factors = [rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2),
                   rng.uniform(-0.1, 0.1)]
        flip, grey, solarize = (bool(b) for b in rng.integers(0, 2, 3))
        sigma = float(rng.uniform(0.1, 2.0)) if rng.random() < 0.5 else 0.0
        size = int(rng.choice([16, 40]))
        ours = make_view(img, size, Image.BICUBIC, 'pil', box, flip, order, factors, grey,
                         sigma, solarize)
        ref = torchvision_view(img, size, box, flip, order, factors, grey, sigma, solarize)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def gaussian_blur_by_hand(img, sigma):
    """torchvision's GaussianBlur(kernel_size=9) of an (H, W, C) uint8 array in float64:
    separable kernel exp(-x^2 / (2 sigma^2)) on x = -4..4, normalised, reflect padding."""
    x = np.arange(-4, 5, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(img.astype(np.float64), ((4, 4), (4, 4), (0, 0)), mode='reflect')
    rows = sum(kernel[i] * padded[i:i + img.shape[0]] for i in range(9))
    return sum(kernel[i] * rows[:, i:i + img.shape[1]] for i in range(9))


@pytest.mark.parametrize('sigma', [0.8, 1.54])
def test_kernel9_blur_is_torchvisions_dinov2_blur(sigma):
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = np.asarray(blur_kernel9(Image.fromarray(img), sigma)).astype(np.float64)
    assert np.abs(out - gaussian_blur_by_hand(img, sigma)).max() <= 1.0  # uint8 rounding
    assert np.abs(out - img).mean() > 2  # it really blurred


def views_of(n, img, **kwargs):
    mc = TRANSFORMS.build(dict(type='MultiCrop', **kwargs))
    np.random.seed(0)
    return [mc(dict(img=img.copy()))['img'] for _ in range(n)]


def test_crop_area_aspect_and_flip_follow_random_resized_crop():
    side, n = 64, 120
    yy, xx = np.mgrid[0:side, 0:side]
    coords = np.stack([np.zeros_like(xx), yy * 4, xx * 4], -1).astype(np.uint8)  # BGR
    samples = views_of(n, coords, num_local=2, global_size=32, local_size=16,
                       interpolation='bilinear', **{**OFF, 'flip_prob': 0.5})
    for views, scale in (([s[0] for s in samples] + [s[1] for s in samples], (0.4, 1.0)),
                         ([s[2] for s in samples] + [s[3] for s in samples], (0.05, 0.4))):
        v = np.stack(views).astype(np.float64)
        o = v.shape[1]
        i, j = o // 4, 3 * o // 4
        # bilinear resampling reproduces a linear ramp: the slope gives the crop size
        dx = (v[:, o // 2, j, 2] - v[:, o // 2, i, 2]) / 4 / ((j - i) / o)
        dy = (v[:, j, o // 2, 1] - v[:, i, o // 2, 1]) / 4 / ((j - i) / o)
        assert_crop_law(dx, dy, coords, o, scale)


def whole_image(n, img, **kwargs):
    """(n, views, H, W, 3): crops of scale (1, 1) of a square image are the image itself."""
    size = img.shape[0]
    return np.array(views_of(n, img, num_local=3, global_size=size, local_size=size,
                             global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), **kwargs))


def check_rate(hits, p):
    assert stats.binomtest(int(hits.sum()), hits.size, p).pvalue > P_MIN, (hits.mean(), p)


def test_jitter_grayscale_blur_and_solarize_probabilities():
    colour = np.broadcast_to(np.array([50, 100, 200], np.uint8), (8, 8, 3)).copy()
    out = whole_image(300, colour, **{**OFF, 'color_jitter_prob': 0.8,
                                      'color_jitter': (0.4, 0, 0, 0)})
    check_rate((out != colour).any((2, 3, 4)), 0.8)
    factor = out[..., 0, 0, 1].astype(np.float64) / 100  # brightness: a blend with black
    applied = factor[(out != colour).any((2, 3, 4))]
    assert stats.kstest(applied, stats.uniform(0.6, 0.8).cdf).pvalue > P_MIN
    out = whole_image(300, colour, **{**OFF, 'grayscale_prob': 0.2})
    grey = (out[..., 0] == out[..., 1]).all((2, 3))
    check_rate(grey, 0.2)
    assert (out[grey][..., 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)).all()
    checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    out = whole_image(300, checker, **{**OFF, 'global_blur_probs': (1.0, 0.1),
                                       'local_blur_prob': 0.5})
    blurred = (out != checker).any((2, 3, 4))
    assert blurred[:, 0].all()
    check_rate(blurred[:, 1], 0.1)
    check_rate(blurred[:, 2:], 0.5)
    out = whole_image(300, colour, **{**OFF, 'solarize_prob': 0.2})
    solarized = (out == np.where(colour >= 128, 255 - colour, colour)).all((2, 3, 4))
    assert not solarized[:, [0, 2, 3]].any()
    check_rate(solarized[:, 1], 0.2)
