"""An embedded semantic-segmentation task: mosaics of Fashion-MNIST garments (mmseg dataset).

A sample is a ``grid x grid`` canvas of 28 px cells (56 x 56 for the default 2 x 2). Each
cell holds a garment with probability ``fill_prob`` (else it stays background), shifted by a
random offset of at most ``max_shift`` pixels, so garment edges do not follow the ViT's
patch grid and neighbours may overlap (the garment placed later is on top). The label of a
pixel is ``1 + class`` where the garment's grey value is above ``threshold`` and 0
(background) elsewhere: 11 classes. Images come from Fashion-MNIST's train split for
``split='train'`` and from its test split for ``split='test'``, so no garment is shared.

Everything is generated in memory from a seed (no files written) and the samples carry
``img`` and ``gt_seg_map`` arrays, so a pipeline starts directly with mmseg's transforms
(``RandomFlip``, ``PackSegInputs``) and mmseg's ``IoUMetric`` scores it unchanged.

Import this module (``custom_imports``) to register ``FashionMNISTMosaic`` in mmseg's
``DATASETS``; it is kept out of ``import mmselfsup_vmf`` because it imports mmseg.
"""
from typing import List, Tuple

import numpy as np
from mmpretrain.datasets.categories import FASHIONMNIST_CATEGORITES
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .small_datasets import DEBIAN_FASHION_MNIST_ROOT, _check_split, read_fashion_mnist

CELL = 28  # Fashion-MNIST's image side


def garment_mosaics(images: np.ndarray, labels: np.ndarray, num_mosaics: int, grid: int = 2,
                    fill_prob: float = 0.75, max_shift: int = 4, threshold: int = 16,
                    seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Compose ``(num_mosaics, S, S)`` uint8 images and label maps, ``S = 28 * grid``.

    Cell (r, c) gets garment ``i`` (uniform over ``images``) with probability ``fill_prob``,
    its top-left corner at ``(28 r + dy, 28 c + dx)``, ``dy, dx`` uniform in
    ``[-max_shift, max_shift]`` (the part outside the canvas is cut off). With
    ``m = images[i] > threshold``: ``image[m] = images[i][m]`` and ``label[m] = labels[i] + 1``;
    pixels covered by no garment mask are 0 in both.
    """
    if images.ndim != 3 or images.shape[1:] != (CELL, CELL):
        raise ValueError(f'images must have shape (N, {CELL}, {CELL}), got {images.shape}')
    if len(images) != len(labels):
        raise ValueError(f'{len(images)} images but {len(labels)} labels')
    if int(grid) < 1 or not 0 <= int(max_shift) < CELL or not 0.0 < fill_prob <= 1.0:
        raise ValueError(f'need grid >= 1, 0 <= max_shift < {CELL}, 0 < fill_prob <= 1; got '
                         f'grid={grid}, max_shift={max_shift}, fill_prob={fill_prob}')
    rng = np.random.default_rng(seed)
    side, pad = CELL * grid, max_shift
    canvas = np.zeros((num_mosaics, side + 2 * pad, side + 2 * pad), dtype=np.uint8)
    seg = np.zeros_like(canvas)
    for n in range(num_mosaics):
        for r in range(grid):
            for c in range(grid):
                if rng.random() >= fill_prob:
                    continue
                i = rng.integers(len(images))
                dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
                y, x = pad + CELL * r + dy, pad + CELL * c + dx
                mask = images[i] > threshold
                canvas[n, y:y + CELL, x:x + CELL][mask] = images[i][mask]
                seg[n, y:y + CELL, x:x + CELL][mask] = labels[i] + 1
    crop = (slice(None), slice(pad, pad + side), slice(pad, pad + side))
    return canvas[crop], seg[crop]


@DATASETS.register_module()
class FashionMNISTMosaic(BaseSegDataset):
    """Mosaics of Fashion-MNIST garments with per-pixel labels (see the module docstring).

    Args:
        data_root (str): folder with the four Fashion-MNIST idx files (Debian's by default).
        split (str): 'train' (garments of the 60,000 train images) or 'test' (of the 10,000
            test images).
        num_mosaics (int): number of samples. Defaults to 2000.
        grid, fill_prob, max_shift, threshold: see :func:`garment_mosaics`.
        seed (int): seed of the composition. Defaults to 0.
        **kwargs: other :class:`mmseg.datasets.BaseSegDataset` arguments (pipeline, ...).
    """
    METAINFO = dict(
        classes=('background', ) + tuple(FASHIONMNIST_CATEGORITES),
        palette=[[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                 [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                 [210, 245, 60], [250, 190, 212]])

    def __init__(self, data_root: str = DEBIAN_FASHION_MNIST_ROOT, split: str = 'train',
                 num_mosaics: int = 2000, grid: int = 2, fill_prob: float = 0.75,
                 max_shift: int = 4, threshold: int = 16, seed: int = 0, **kwargs):
        self.split = _check_split(split)
        if int(num_mosaics) < 1:
            raise ValueError(f'num_mosaics must be >= 1, got {num_mosaics}')
        self.mosaic_args = dict(num_mosaics=int(num_mosaics), grid=int(grid),
                                fill_prob=float(fill_prob), max_shift=int(max_shift),
                                threshold=int(threshold), seed=int(seed))
        kwargs.setdefault('serialize_data', False)  # a few MB of arrays; nothing to gain
        super().__init__(data_root=data_root, reduce_zero_label=False, **kwargs)

    def load_data_list(self) -> List[dict]:
        images, labels = read_fashion_mnist(self.data_root, self.split)
        grey, seg = garment_mosaics(images, labels, **self.mosaic_args)
        shape = grey.shape[1:]
        return [dict(img=np.repeat(g[..., None], 3, axis=-1), gt_seg_map=s,
                     seg_fields=['gt_seg_map'], img_path=None, seg_map_path=None,
                     img_shape=shape, ori_shape=shape, reduce_zero_label=False,
                     label_map=self.label_map, sample_idx=i)
                for i, (g, s) in enumerate(zip(grey, seg))]
