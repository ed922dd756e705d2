"""Per-view random parameters of DINO's multi-crop, drawn from one generator per sample.

The distributions are those of the CPU ``MultiCrop`` pipeline
(:mod:`mmselfsup_vmf.datasets.transforms.multicrop`, DINO's ``DataAugmentationDINO`` in
facebookresearch/dino ``main_dino.py`` @ 7c446df): mmpretrain's ``RandomResizedCrop`` box,
flip p=0.5, colour jitter p=0.8 with factors uniform in ``[1-b, 1+b]``, ``[1-c, 1+c]``,
``[1-s, 1+s]``, ``[-h, h]`` applied in a random order, grayscale p=0.2, Gaussian blur with
sigma ~ U[0.1, 2] and solarisation, each with its view's probability. Every value is drawn
for every view whether or not the operation is applied, so one sample's draws never depend
on another's and the parameters are a function of the sample's seed only.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')


@dataclass(frozen=True)
class ViewLaw:
    """The distribution of one view: output size, crop scale range and probabilities."""
    size: int
    scale: Tuple[float, float]
    blur_prob: float
    solarize_prob: float = 0.0


def resized_crop_box(rng: np.random.Generator, height: int, width: int,
                     scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3),
                     max_attempts: int = 10) -> Tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random resized crop of a ``height x width`` image.

    torchvision's / mmpretrain's ``RandomResizedCrop.rand_crop_params``: area fraction
    a ~ U[scale], log aspect ~ U[log ratio], ``w = round(sqrt(a H W r))``,
    ``h = round(sqrt(a H W / r))``; accepted if it fits, the offsets then uniform over the
    valid integer positions; after ``max_attempts`` rejections, the centred largest crop
    with an aspect ratio inside ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(max_attempts):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def draw_view_params(rng: np.random.Generator, height: int, width: int, law: ViewLaw,
                     color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                     color_jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                     flip_prob: float = 0.5, sigma_range: Tuple[float, float] = (0.1, 2.0)
                     ) -> dict:
    """All random values of one view of a ``height x width`` image (see the module doc)."""
    brightness, contrast, saturation, hue = color_jitter
    box = resized_crop_box(rng, height, width, law.scale)
    u = rng.random(5)
    factors = (rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
               rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
               rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
               rng.uniform(-hue, hue))
    return dict(box=box,
                flip=bool(u[0] < flip_prob),
                jitter=bool(u[1] < color_jitter_prob),
                jitter_factors=factors,
                jitter_order=tuple(int(i) for i in rng.permutation(4)),
                grayscale=bool(u[2] < grayscale_prob),
                blur=bool(u[3] < law.blur_prob),
                sigma=float(rng.uniform(*sigma_range)),
                solarize=bool(u[4] < law.solarize_prob))


def draw_sample_params(seed: int, height: int, width: int, laws: Sequence[ViewLaw],
                       **kwargs) -> List[dict]:
    """The parameters of every view of one sample, from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [draw_view_params(rng, height, width, law, **kwargs) for law in laws]
