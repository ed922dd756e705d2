"""DINO's multi-crop on the CPU: PIL operations of DINO's torchvision pipeline, fewer steps.

Each view is made with the PIL operations that facebookresearch/dino's
``DataAugmentationDINO`` (``main_dino.py`` @ 7c446df) reaches through torchvision: crop then
bicubic resize, flip, ``ImageEnhance`` brightness / contrast / saturation blends, the HSV hue
shift, the ``L`` grayscale, PIL's ``GaussianBlur`` and ``ImageOps.solarize``. Given the same
random values the views are bit-identical to torchvision's
(tests/datasets/test_multicrop_laws.py). The speed comes from doing less around them: every
random value of the 12 views is drawn in one vectorised call
(:func:`~mmselfsup_vmf.models.utils.multicrop_params.draw_sample_params`, the draws of the
device path too), the PIL calls are made directly (no torchvision dispatch, no torch RNG
calls), DINOv2's kernel-9 blur is one OpenCV separable filter, and the views leave as uint8
arrays (normalisation is the data preprocessor's, on the device).
"""
from typing import Sequence, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS
from PIL import Image, ImageFilter

from mmselfsup_vmf.models.utils.multicrop_params import ViewLaw, draw_sample_params

BLURS = ('pil', 'kernel9')
RESAMPLE = {name: Image.Resampling[name.upper()]
            for name in ('nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming')}
SOLARIZE_LUT = [i if i < 128 else 255 - i for i in range(256)] * 3  # ImageOps.solarize(128)


def adjust_brightness(img: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Brightness(img).enhance(factor)``: a blend with black."""
    return Image.blend(Image.new('RGB', img.size, 0), img, factor)


def adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Contrast(img).enhance(factor)``: a blend with the rounded mean of the
    ``L`` image."""
    hist = np.asarray(img.convert('L').histogram(), dtype=np.float64)
    mean = int(hist @ np.arange(256) / hist.sum() + 0.5)
    return Image.blend(Image.new('RGB', img.size, (mean,) * 3), img, factor)


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Color(img).enhance(factor)`` (a blend with the grey image)."""
    return Image.blend(img.convert('L').convert('RGB'), img, factor)


def adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: H of PIL's HSV shifted by ``int(255 factor)``
    modulo 256."""
    shift = int(np.int32(factor * 255))
    h, s, v = img.convert('HSV').split()
    h = h.point([(i + shift) % 256 for i in range(256)])
    return Image.merge('HSV', (h, s, v)).convert('RGB')


JITTERS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def blur_kernel9(img: Image.Image, sigma: float) -> Image.Image:
    """torchvision's ``GaussianBlur(kernel_size=9, sigma)``: float32 taps
    ``exp(-x^2 / 2 sigma^2)``, x = -4..4, normalised, reflect padding, rounded to uint8."""
    x = np.arange(-4, 5, dtype=np.float32)
    taps = np.exp(-0.5 * (x / np.float32(sigma)) ** 2)
    taps /= taps.sum()
    out = cv2.sepFilter2D(np.asarray(img, dtype=np.float32), cv2.CV_32F, taps, taps,
                          borderType=cv2.BORDER_REFLECT_101)
    return Image.fromarray(np.rint(out).clip(0, 255).astype(np.uint8))


def make_view(img: Image.Image, size: int, resample: int, blur: str, box, flip: bool,
              jitter_order: Sequence[int] = (), jitter_factors: Sequence[float] = (),
              grayscale: bool = False, sigma: float = 0.0, solarize: bool = False
              ) -> Image.Image:
    """One view of an RGB image from its drawn values, in DINO's order: crop + resize,
    flip, colour jitter (``jitter_order`` of brightness, contrast, saturation, hue with
    ``jitter_factors``; empty = not applied), grayscale, blur (``sigma`` > 0), solarise."""
    top, left, h, w = (int(v) for v in box)
    out = img.crop((left, top, left + w, top + h)).resize((size, size), resample)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for op in jitter_order:
        out = JITTERS[op](out, float(jitter_factors[op]))
    if grayscale:
        out = out.convert('L').convert('RGB')
    if sigma > 0:
        out = (out.filter(ImageFilter.GaussianBlur(radius=float(sigma))) if blur == 'pil'
               else blur_kernel9(out, sigma))
    if solarize:
        out = out.point(SOLARIZE_LUT)
    return out


@TRANSFORMS.register_module()
class MultiCrop(BaseTransform):
    """``num_global`` global crops + ``num_local`` local crops (DINO/iBOT/SimDINO).

    Global view 1 has blur p=``global_blur_probs[0]`` (1.0); the others have
    ``global_blur_probs[1]`` (0.1) and solarize p=``solarize_prob`` (0.2); local crops have
    blur p=``local_blur_prob`` (0.5). Every view: random resized crop (area fraction in its
    scale range, aspect in [3/4, 4/3]), flip p=``flip_prob``, colour jitter
    p=``color_jitter_prob`` with ``color_jitter`` = (brightness, contrast, saturation, hue)
    in a random order, grayscale p=``grayscale_prob``.

    ``img`` must be an ``(H, W, 3)`` (or ``(H, W)``) uint8 array in ``channel_order``
    (mmcv's loaders give ``'bgr'``); the output ``img`` is the list of views, globals
    first, each ``(size, size, 3)`` uint8 in the same channel order. ``blur='pil'`` is
    DINO's PIL ``GaussianBlur(radius ~ U[0.1, 2])``; ``'kernel9'`` is DINOv2's torchvision
    ``GaussianBlur(kernel_size=9, sigma ~ U[0.1, 2])`` (applied with the given
    probabilities, see ``docs/methods.md#simdinov2-augmentations``). The random values come
    from numpy's global generator (which ``SeededDataset`` seeds per sample).
    """

    def __init__(self,
                 num_global: int = 2,
                 num_local: int = 10,
                 global_size: int = 224,
                 local_size: int = 96,
                 global_scale: Tuple[float, float] = (0.4, 1.0),
                 local_scale: Tuple[float, float] = (0.05, 0.4),
                 global_blur_probs: Tuple[float, float] = (1.0, 0.1),
                 local_blur_prob: float = 0.5,
                 solarize_prob: float = 0.2,
                 interpolation: str = 'bicubic',
                 blur: str = 'pil',
                 color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                 color_jitter_prob: float = 0.8,
                 grayscale_prob: float = 0.2,
                 flip_prob: float = 0.5,
                 channel_order: str = 'bgr'):
        if num_global < 1:
            raise ValueError(f'MultiCrop needs num_global >= 1 global crops (the teacher '
                             f'only sees global crops), got num_global={num_global}')
        if num_local < 0:
            raise ValueError(f'MultiCrop num_local must be >= 0, got {num_local}')
        for name, sc in (('global_scale', global_scale), ('local_scale', local_scale)):
            if not (len(sc) == 2 and 0 < sc[0] <= sc[1] <= 1):
                raise ValueError(f'MultiCrop {name} must be (min, max) with 0 < min <= max '
                                 f'<= 1, got {sc}')
        if blur not in BLURS:
            raise ValueError(f'MultiCrop blur must be one of {BLURS}, got {blur!r}')
        if interpolation not in RESAMPLE:
            raise ValueError(f'MultiCrop interpolation must be one of {tuple(RESAMPLE)}, '
                             f'got {interpolation!r}')
        if channel_order not in ('bgr', 'rgb'):
            raise ValueError(f"MultiCrop channel_order must be 'bgr' or 'rgb', got "
                             f'{channel_order!r}')
        if len(color_jitter) != 4:
            raise ValueError('MultiCrop color_jitter must be (brightness, contrast, '
                             f'saturation, hue), got {color_jitter}')
        self.num_global, self.num_local = num_global, num_local
        self.laws = ([ViewLaw(global_size, tuple(global_scale), global_blur_probs[0])] +
                     [ViewLaw(global_size, tuple(global_scale), global_blur_probs[1],
                              solarize_prob)] * (num_global - 1) +
                     [ViewLaw(local_size, tuple(local_scale), local_blur_prob)] * num_local)
        self.blur, self.resample = blur, RESAMPLE[interpolation]
        self.color_jitter = tuple(float(v) for v in color_jitter)
        # torchvision's ColorJitter skips an operation whose range is zero
        self.jitter_ops = np.array([v != 0 for v in self.color_jitter])
        self.color_jitter_prob, self.grayscale_prob = color_jitter_prob, grayscale_prob
        self.flip_prob, self.bgr = flip_prob, channel_order == 'bgr'

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f'MultiCrop expects an HxWx3 uint8 image, got shape {img.shape} '
                             f'{img.dtype} ({results.get("img_path", "in-memory image")})')
        rgb = Image.fromarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if self.bgr else img)
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
        p = draw_sample_params(seed, img.shape[0], img.shape[1], self.laws,
                               self.color_jitter, self.color_jitter_prob, self.grayscale_prob,
                               self.flip_prob)
        views = []
        for v, law in enumerate(self.laws):
            out = make_view(rgb, law.size, self.resample, self.blur, p['box'][v], p['flip'][v],
                            self.jitter_order(p, v),
                            p['jitter_factors'][v], p['grayscale'][v],
                            p['sigma'][v] if p['blur'][v] else 0.0, p['solarize'][v])
            arr = np.asarray(out)
            views.append(arr[..., ::-1] if self.bgr else arr)  # PackInputs copies once
        results['img'] = views
        return results

    def jitter_order(self, params: dict, view: int) -> Sequence[int]:
        """The jitter operations of ``view`` in their drawn order; () when not applied."""
        if not params['jitter'][view]:
            return ()
        order = params['jitter_order'][view]
        return order[self.jitter_ops[order]]

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(laws={self.laws}, blur={self.blur!r}, '
                f'color_jitter={self.color_jitter}, color_jitter_prob='
                f'{self.color_jitter_prob}, grayscale_prob={self.grayscale_prob}, '
                f'flip_prob={self.flip_prob}, bgr={self.bgr})')
