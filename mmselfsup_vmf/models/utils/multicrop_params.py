"""Per-view random parameters of DINO's multi-crop, drawn from one generator per sample.

The distributions are those of the CPU ``MultiCrop`` pipeline
(:mod:`mmselfsup_vmf.datasets.transforms.multicrop`, DINO's ``DataAugmentationDINO`` in
facebookresearch/dino ``main_dino.py`` @ 7c446df): mmpretrain's ``RandomResizedCrop`` box,
flip p=0.5, colour jitter p=0.8 with factors uniform in ``[1-b, 1+b]``, ``[1-c, 1+c]``,
``[1-s, 1+s]``, ``[-h, h]`` applied in a random order, grayscale p=0.2, Gaussian blur with
sigma ~ U[0.1, 2] and solarisation, each with its view's probability. Every value is drawn
for every view whether or not the operation is applied, from one generator per sample, so
the parameters are a function of the sample's seed only.

``DeviceMultiCropInput`` draws them in the loader workers (:func:`multicrop_laws` turns
``MultiCrop``'s arguments into the laws), so the training process only stacks them.
"""
import inspect
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class ViewLaw:
    """The distribution of one view: output size, crop scale range and probabilities."""
    size: int
    scale: Tuple[float, float]
    blur_prob: float
    solarize_prob: float = 0.0


def resized_crop_boxes(rng: np.random.Generator, height: int, width: int,
                       scales: np.ndarray, ratio: Sequence[float] = (3 / 4, 4 / 3),
                       max_attempts: int = 10) -> np.ndarray:
    """``(V, 4)`` boxes ``(top, left, h, w)`` of random resized crops of one image.

    The law of torchvision's / mmpretrain's ``RandomResizedCrop.rand_crop_params``, one row
    per view ``scales[v] = (min, max)``: area fraction a ~ U[scale], log aspect
    r ~ U[log ratio], ``w = round(sqrt(a H W r))``, ``h = round(sqrt(a H W / r))``; the first
    of ``max_attempts`` draws that fits is kept, its offsets uniform over the valid integer
    positions; if none fits, the centred largest crop with an aspect ratio inside ``ratio``.
    All attempts are drawn at once (same law, fewer Python steps).
    """
    num = len(scales)
    lo, hi = scales[:, :1], scales[:, 1:]
    area = (lo + (hi - lo) * rng.random((num, max_attempts))) * (height * width)
    log_r = np.log(ratio[0]) + np.log(ratio[1] / ratio[0]) * rng.random((num, max_attempts))
    aspect = np.exp(log_r)
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(1)
    h, w = h[np.arange(num), first], w[np.arange(num), first]
    u_top, u_left = rng.random(num), rng.random(num)
    top = np.floor(u_top * (height - h + 1)).astype(np.int64)
    left = np.floor(u_left * (width - w + 1)).astype(np.int64)
    boxes = np.stack([top, left, h, w], 1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_h, fb_w = int(round(width / min(ratio))), width
    elif in_ratio > max(ratio):
        fb_h, fb_w = height, int(round(height * max(ratio)))
    else:
        fb_h, fb_w = height, width
    boxes[~fits.any(1)] = ((height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w)
    return boxes


def draw_sample_params(seed: int, height: int, width: int, laws: Sequence[ViewLaw],
                       color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                       color_jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                       flip_prob: float = 0.5, sigma_range: Tuple[float, float] = (0.1, 2.0)
                       ) -> Dict[str, np.ndarray]:
    """Every random value of every view of one ``height x width`` image, from
    ``np.random.default_rng(seed)``: arrays with one row per view (see the module doc)."""
    rng = np.random.default_rng(seed)
    num = len(laws)
    brightness, contrast, saturation, hue = color_jitter
    boxes = resized_crop_boxes(rng, height, width, np.array([law.scale for law in laws]))
    u = rng.random((num, 5))
    lo = np.array([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation),
                   -hue])
    hi = np.array([1 + brightness, 1 + contrast, 1 + saturation, hue])
    factors = lo + (hi - lo) * rng.random((num, 4))
    return dict(box=boxes,
                flip=u[:, 0] < flip_prob,
                jitter=u[:, 1] < color_jitter_prob,
                jitter_factors=factors,
                jitter_order=np.argsort(rng.random((num, 4)), 1),  # uniform permutations
                grayscale=u[:, 2] < grayscale_prob,
                blur=u[:, 3] < np.array([law.blur_prob for law in laws]),
                sigma=sigma_range[0] + (sigma_range[1] - sigma_range[0]) * rng.random(num),
                solarize=u[:, 4] < np.array([law.solarize_prob for law in laws]))


def multicrop_laws(num_global: int = 2, num_local: int = 10, global_size: int = 224,
                   local_size: int = 96, global_scale: Tuple[float, float] = (0.4, 1.0),
                   local_scale: Tuple[float, float] = (0.05, 0.4),
                   global_blur_probs: Tuple[float, float] = (1.0, 0.1),
                   local_blur_prob: float = 0.5, solarize_prob: float = 0.2,
                   color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                   color_jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                   flip_prob: float = 0.5) -> Tuple[List[ViewLaw], dict]:
    """``MultiCrop``'s arguments (same defaults) -> (the law of every view, globals first;
    the keyword arguments of :func:`draw_sample_params`)."""
    if num_global < 1 or num_local < 0:
        raise ValueError(f'multi-crop on the device needs num_global >= 1 and num_local >= 0, '
                         f'got {num_global} and {num_local}')
    for name, sc in (('global_scale', global_scale), ('local_scale', local_scale)):
        if not (len(sc) == 2 and 0 < sc[0] <= sc[1] <= 1):
            raise ValueError(f'multi-crop on the device: {name} must be (min, max) with '
                             f'0 < min <= max <= 1, got {sc}')
    first = ViewLaw(global_size, tuple(global_scale), global_blur_probs[0])
    second = ViewLaw(global_size, tuple(global_scale), global_blur_probs[1], solarize_prob)
    local = ViewLaw(local_size, tuple(local_scale), local_blur_prob)
    laws = [first] + [second] * (num_global - 1) + [local] * num_local
    return laws, dict(color_jitter=tuple(color_jitter), color_jitter_prob=color_jitter_prob,
                      grayscale_prob=grayscale_prob, flip_prob=flip_prob)


LAW_ARGS = tuple(inspect.signature(multicrop_laws).parameters)


# the packed layout of one view's parameters: (name, width); booleans as 0/1, the jitter
# order as operation indices. float32 holds the integer boxes exactly (< 2**24 px).
PARAM_LAYOUT = (('box', 4), ('flip', 1), ('jitter', 1), ('jitter_factors', 4),
                ('jitter_order', 4), ('grayscale', 1), ('blur', 1), ('sigma', 1),
                ('solarize', 1))
PARAM_WIDTH = sum(width for _, width in PARAM_LAYOUT)


def pack_params(params: Dict[str, np.ndarray]) -> np.ndarray:
    """Arrays of shape ``(..., V[, width])`` -> one float32 array ``(..., V, PARAM_WIDTH)``
    in the order of ``PARAM_LAYOUT`` (one tensor per batch to pin and copy)."""
    columns = [np.asarray(params[name], np.float32).reshape(*params['box'].shape[:-1], width)
               for name, width in PARAM_LAYOUT]
    return np.concatenate(columns, -1)


def unpack_params(packed):
    """``(..., PARAM_WIDTH)`` array or tensor -> dict of views ``(..., width)`` (no copy)."""
    out, start = {}, 0
    for name, width in PARAM_LAYOUT:
        out[name] = packed[..., start:start + width]
        start += width
    return out
