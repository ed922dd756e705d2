"""MultiCropDataPreprocessor (multi-crop on the device) against independent references.

Distributions are checked on the *outputs* of crafted images, with fixed seeds: crop area
and aspect (KS against mmpretrain's ``RandomResizedCrop``, the CPU pipeline's crop), jitter
factors and blur sigma (KS against the uniform laws of DINO's ``DataAugmentationDINO``;
sigma through a float64 discrete Gaussian), probabilities (binomial tests against DINO's
values). Colour-jitter order is checked against float64 torchvision formulas, solarisation
against PIL.
"""
import colorsys

import numpy as np
import pytest
import torch
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from PIL import Image, ImageOps
from scipy import stats
from testing_utils import assert_crop_law

P_MIN = 1e-3  # fixed seeds: a p-value below this means the law is wrong


def batch_of(images: np.ndarray, seeds, shape=None) -> dict:
    """(B, H, W, 3) uint8 images -> the collated output of DeviceMultiCropInput+PackInputs."""
    samples = [DataSample(metainfo=dict(aug_seed=int(s), img_shape=shape or images.shape[1:3]))
               for s in seeds]
    return dict(inputs=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                data_samples=samples)


def preprocessor(**kwargs) -> torch.nn.Module:
    return MODELS.build(dict(type='MultiCropDataPreprocessor', **kwargs))


def identity_crops(size, **kwargs):
    """Crops of scale (1, 1) of a size x size image are the whole image (rejection, then
    the centred fallback), so only the intensity operations act."""
    return preprocessor(global_size=size, local_size=size, global_scale=(1.0, 1.0),
                        local_scale=(1.0, 1.0), flip_prob=0.0, **kwargs)


NO_INTENSITY = dict(color_jitter_prob=0.0, grayscale_prob=0.0, global_blur_probs=(0, 0),
                    local_blur_prob=0.0, solarize_prob=0.0)


def constant(rgb, n, size=8):
    return np.broadcast_to(np.array(rgb, np.uint8), (n, size, size, 3)).copy()


def test_crop_area_aspect_and_flip_match_the_cpu_crop():
    n, side = 160, 64
    yy, xx = np.mgrid[0:side, 0:side]
    coords = np.stack([xx * 4, yy * 4, np.zeros_like(xx)], -1).astype(np.uint8)
    pre = preprocessor(num_local=6, global_size=32, local_size=16,
                       interpolation='bilinear', **NO_INTENSITY)
    views = pre(batch_of(np.repeat(coords[None], n, 0), range(n)), True)['inputs']
    for view, scale in ((torch.cat(views[:2]), (0.4, 1.0)), (torch.cat(views[2:]), (0.05, 0.4))):
        o = view.shape[-1]
        i, j = o // 4, 3 * o // 4
        # bilinear resampling reproduces a linear ramp: the slope gives the crop size
        dx = (view[:, 0, o // 2, j] - view[:, 0, o // 2, i]) / 4 / ((j - i) / o)
        dy = (view[:, 1, j, o // 2] - view[:, 1, i, o // 2]) / 4 / ((j - i) / o)
        assert_crop_law(dx.numpy(), dy.numpy(), coords, o, scale)


def test_crops_stay_inside_the_resized_image():
    valid = np.zeros((40, 64, 64, 3), np.uint8)
    valid[:, :30, :50] = 200  # the padding is zeros
    pre = preprocessor(num_local=4, global_size=24, local_size=12, **NO_INTENSITY)
    views = pre(batch_of(valid, range(40), shape=(30, 50)), True)['inputs']
    for view in views:
        assert torch.allclose(view, torch.full_like(view, 200.0), atol=1e-3)


@pytest.mark.parametrize('op', ['brightness', 'contrast', 'saturation', 'hue'])
def test_jitter_factor_laws_and_probability(op):
    n, size = 150, 8
    jitter = dict(brightness=(0.4, 0, 0, 0), contrast=(0, 0.4, 0, 0),
                  saturation=(0, 0, 0.2, 0), hue=(0, 0, 0, 0.1))[op]
    img = constant((200, 100, 50), n, size)
    if op == 'contrast':
        img[:, :, :size // 2] = 60
    pre = identity_crops(size, num_local=4, color_jitter=jitter,
                         **{**NO_INTENSITY, 'color_jitter_prob': 0.8})
    out = torch.cat(pre(batch_of(img, range(n)), True)['inputs']).double()
    x = torch.from_numpy(img[0]).permute(2, 0, 1).double()
    if op == 'brightness':
        factor, law = out[:, 1, 0, 0] / 100, (0.6, 0.8)
    elif op == 'contrast':  # torchvision: c x + (1 - c) mean(gray); a difference scales by c
        factor, law = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) / (x[0, 0, -1] - x[0, 0, 0]), (0.6, 0.8)
    elif op == 'saturation':  # s x + (1 - s) gray: channel differences scale by s
        factor, law = (out[:, 0, 0, 0] - out[:, 1, 0, 0]) / 100, (0.8, 0.4)
    else:
        h0 = colorsys.rgb_to_hsv(200 / 255, 100 / 255, 50 / 255)[0]
        hues = [colorsys.rgb_to_hsv(*(px / 255).tolist())[0] for px in out[:, :, 0, 0]]
        factor = torch.tensor([(h - h0 + 0.5) % 1 - 0.5 for h in hues])
        law = (-0.1, 0.2)
    neutral = 0.0 if op == 'hue' else 1.0
    applied = (factor - neutral).abs() > 1e-4
    assert stats.binomtest(int(applied.sum()), len(applied), 0.8).pvalue > P_MIN
    ks = stats.kstest(factor[applied].numpy(), stats.uniform(*law).cdf)
    assert ks.pvalue > P_MIN, ks


def torchvision_formulas(x, factors, order):
    """float64 brightness / contrast / saturation of torchvision's functional_tensor."""
    def gray(y):
        return (0.299 * y[0] + 0.587 * y[1] + 0.114 * y[2])[None]
    for op in order:
        f = factors[op]
        if op == 0:
            x = (x * f).clamp(0, 1)
        elif op == 1:
            x = (f * x + (1 - f) * gray(x).mean()).clamp(0, 1)
        elif op == 2:
            x = (f * x + (1 - f) * gray(x)).clamp(0, 1)
    return x


def test_jitter_follows_each_crops_own_random_order():
    n, size = 48, 6
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    pre = identity_crops(size, num_local=2, color_jitter=(0.8, 0.8, 0.8, 0.0),
                         **{**NO_INTENSITY, 'color_jitter_prob': 1.0})
    data = batch_of(img, range(n))
    views = pre(data, True)['inputs']
    params = pre.draw_params(data['data_samples'], size, size)
    orders = set()
    for v, view in enumerate(views):
        for b in range(n):
            order = tuple(params['jitter_order'][b, v].tolist())
            ref = torchvision_formulas(torch.from_numpy(img[b]).permute(2, 0, 1).double() / 255,
                                       params['jitter_factors'][b, v].tolist(), order)
            torch.testing.assert_close(view[b].double() / 255, ref, atol=2e-5, rtol=0)
            orders.add(order)
    assert len(orders) == 24  # per crop, not one order per call


@pytest.mark.parametrize('channel_order', ['rgb', 'bgr'])
def test_grayscale_probability_and_weights(channel_order):
    n = 1000
    pre = identity_crops(8, num_local=0, to_rgb=channel_order == 'bgr',
                         **{**NO_INTENSITY, 'grayscale_prob': 0.2})
    rgb = (200, 100, 50)
    img = constant(rgb if channel_order == 'rgb' else rgb[::-1], n)
    out = torch.cat(pre(batch_of(img, range(n)), True)['inputs'])[:, :, 0, 0]
    grey = (out[:, 0] == out[:, 2])
    assert stats.binomtest(int(grey.sum()), len(grey), 0.2).pvalue > P_MIN
    # PIL's convert('L'): L = R 299/1000 + G 587/1000 + B 114/1000
    pil = np.asarray(Image.fromarray(constant(rgb, 1)[0]).convert('L'))[0, 0]
    assert torch.allclose(out[grey], torch.full_like(out[grey], float(pil)), atol=0.6)


def discrete_gaussian_std(sigma: np.ndarray, taps: int) -> np.ndarray:
    """Per-axis standard deviation of a sampled, truncated, normalised Gaussian (float64)."""
    x = np.arange(taps) - taps // 2
    w = np.exp(-x[None] ** 2 / (2 * sigma[:, None] ** 2))
    w /= w.sum(1, keepdims=True)
    return np.sqrt((w * x[None] ** 2).sum(1))


@pytest.mark.parametrize('blur,taps', [('pil', 13), ('kernel9', 9)])
def test_blur_probabilities_and_sigma_law(blur, taps):
    n, size = 800, 17
    delta = np.zeros((n, size, size, 3), np.uint8)
    delta[:, size // 2, size // 2] = 255
    pre = identity_crops(size, num_local=2, blur=blur,
                         **{**NO_INTENSITY, 'global_blur_probs': (1.0, 0.1),
                            'local_blur_prob': 0.5})
    views = pre(batch_of(delta, range(n)), True)['inputs']
    x = torch.arange(size, dtype=torch.float64) - size // 2
    # a blur with sigma < ~0.3 leaves a delta unchanged: count and compare sigma > 0.5 only
    cut = discrete_gaussian_std(np.array([0.5]), taps)[0]
    sigmas = []
    for views_of_law, prob in ((views[:1], 1.0), (views[1:2], 0.1), (views[2:], 0.5)):
        rows = torch.cat(views_of_law)[:, 0].double().sum(1)  # marginal along x
        sigma = torch.sqrt((rows * x ** 2).sum(1) / rows.sum(1))
        seen = sigma > cut
        expected = prob * (2.0 - 0.5) / (2.0 - 0.1)
        assert stats.binomtest(int(seen.sum()), len(seen), expected).pvalue > P_MIN
        sigmas.append(sigma[seen])
    ref = discrete_gaussian_std(np.random.default_rng(0).uniform(0.1, 2.0, 20000), taps)
    ks = stats.ks_2samp(torch.cat(sigmas).numpy(), ref[ref > cut])
    assert ks.pvalue > P_MIN, ks


def test_solarize_probability_and_pil_threshold():
    n = 400
    img = np.zeros((n, 2, 2, 3), np.uint8)
    img[:, 0], img[:, 1] = 127, 200
    pre = identity_crops(2, num_local=1, **{**NO_INTENSITY, 'solarize_prob': 0.2})
    views = pre(batch_of(img, range(n)), True)['inputs']
    solarized = views[1][:, 0, 1, 0] < 100
    assert stats.binomtest(int(solarized.sum()), n, 0.2).pvalue > P_MIN
    assert not (views[0][:, 0, 1, 0] < 100).any() and not (views[2][:, 0, 1, 0] < 100).any()
    pil = np.asarray(ImageOps.solarize(Image.fromarray(img[0]), threshold=128), np.float32)
    got = views[1][solarized][0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, pil, atol=1e-3)


def test_views_depend_on_the_sample_seed_only():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    pre = preprocessor(num_local=2, global_size=16, local_size=8)
    a = pre(batch_of(img, [11, 12, 13, 14]), True)['inputs']
    b = pre(batch_of(img[[2, 0]], [13, 11]), True)['inputs']
    c = pre(batch_of(img[:1], [99]), True)['inputs']
    for va, vb, vc in zip(a, b, c):
        assert torch.equal(va[[2, 0]], vb)
        assert not torch.equal(va[0], vc[0])


def test_bad_inputs_have_one_line_errors():
    pre = preprocessor(num_local=0, global_size=8)
    data = batch_of(constant((1, 2, 3), 2), [1, 2])
    data['data_samples'][1] = DataSample()
    with pytest.raises(ValueError, match=r"data_samples\[1\] has no crop_params nor aug_seed"):
        pre(data, True)
    with pytest.raises(ValueError, match=r'expects inputs of shape \(B, 3, H, W\)'):
        pre(dict(inputs=[torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2,
                 data_samples=data['data_samples']), True)
    with pytest.raises(ValueError, match='blur must be one of'):
        preprocessor(blur='box')


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
def test_batched_crop_is_torchs_resize_of_each_slice(mode):
    """crop_resize against float64 F.interpolate of each sliced box (the per-row resize it
    replaces), flips included."""
    from mmselfsup_vmf.models.utils.multicrop_ops import crop_resize
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((6, 3, 30, 40)))
    boxes = np.array([[0, 0, 30, 40], [3, 5, 10, 7], [10, 2, 20, 30], [0, 20, 5, 20],
                      [7, 7, 12, 12], [29, 39, 1, 1]])
    flip = torch.tensor([0, 1, 0, 1, 1, 0])
    got = crop_resize(x.float(), torch.from_numpy(boxes).float(), flip.float(), 12, mode)
    for b, (top, left, h, w) in enumerate(boxes):
        ref = torch.nn.functional.interpolate(x[b:b + 1, :, top:top + h, left:left + w],
                                              (12, 12), mode=mode, align_corners=False)[0]
        ref = ref.flip(-1) if flip[b] else ref
        torch.testing.assert_close(got[b].double(), ref, atol=2e-5, rtol=0)


def loader_batch(n=4, side=32, **laws):
    """DeviceMultiCropInput on n random images, collated by multicrop_collate."""
    from mmselfsup_vmf.datasets import multicrop_collate
    from mmselfsup_vmf.datasets.transforms import DeviceMultiCropInput
    rng = np.random.default_rng(5)
    transform = DeviceMultiCropInput(size=side, **laws)
    samples = []
    for i in range(n):
        np.random.seed(i)
        out = transform(dict(img=rng.integers(0, 256, (side, side - 4, 3), dtype=np.uint8)))
        samples.append(dict(
            inputs=torch.from_numpy(out['img']).permute(2, 0, 1).contiguous(),
            data_samples=DataSample(metainfo={k: out[k] for k in
                                              ('img_shape', 'aug_seed', 'crop_params')})))
    return multicrop_collate(samples)


def test_loader_packed_parameters_give_the_views_of_the_sample_seeds():
    laws = dict(num_local=3, global_size=16, local_size=8)
    batch = loader_batch(**laws)
    assert batch['crop_params'].shape == (4, 5, 18) and batch['crop_params'].dtype == \
        torch.float32
    pre = preprocessor(**laws)
    from_loader = pre(batch, True)['inputs']
    for sample in batch['data_samples']:  # the hand path: drawn here from aug_seed
        sample.set_metainfo(dict(crop_params=None))
    by_hand = pre(dict(inputs=batch['inputs'], data_samples=batch['data_samples']),
                  True)['inputs']
    for a, b in zip(from_loader, by_hand):
        assert torch.equal(a, b)


def test_views_are_made_on_the_device_from_the_batch_alone():
    """On the 'meta' device any read of a value (.item(), nonzero, a boolean index) raises,
    and so does any tensor made on the host from Python data joining the computation: the
    batch and its packed parameters are all the step needs."""
    laws = dict(num_local=3, global_size=16, local_size=8)
    pre = preprocessor(**laws).to('meta')
    views = pre(loader_batch(**laws), True)['inputs']
    assert [(v.device.type, tuple(v.shape)) for v in views] == \
        [('meta', (4, 3, 16, 16))] * 2 + [('meta', (4, 3, 8, 8))] * 3
