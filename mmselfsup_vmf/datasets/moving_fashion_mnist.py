"""Fashion-MNIST garments at random offsets on a larger canvas: a task where the object moves.

Centred, aligned 28 × 28 garments make raw pixels an unusually strong baseline (a pixel is the
same part of the garment in every image). Here each garment is pasted, unchanged, at an
integer offset (dy, dx) drawn uniformly from [0, canvas − 28]² on a black ``canvas`` ×
``canvas`` image. The offsets are a fixed, seeded property of the dataset (image i of a split
always sits at the same place), so pre-training, the k-NN bank and the queries see one
consistent set of images; augmentations then move the crops as usual.
"""
from typing import List, Optional

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.datasets.categories import FASHIONMNIST_CATEGORITES
from mmpretrain.registry import DATASETS

from .small_datasets import (
    DEBIAN_FASHION_MNIST_ROOT,
    _check_split,
    balanced_subset,
    read_fashion_mnist,
)

GARMENT = 28


def garment_offsets(num_images: int, canvas: int, seed: int) -> np.ndarray:
    """(N, 2) integer offsets (dy, dx), uniform in [0, canvas − 28], from ``seed``."""
    return np.random.default_rng(seed).integers(0, canvas - GARMENT + 1, size=(num_images, 2))


def place_on_canvas(images: np.ndarray, offsets: np.ndarray, canvas: int) -> np.ndarray:
    """(N, 28, 28) uint8 garments -> (N, canvas, canvas, 3) uint8, each at its offset."""
    out = np.zeros((len(images), canvas, canvas), dtype=np.uint8)
    for i, (image, (dy, dx)) in enumerate(zip(images, offsets)):
        out[i, dy:dy + GARMENT, dx:dx + GARMENT] = image
    return np.repeat(out[..., None], 3, axis=-1)


@DATASETS.register_module()
class FashionMNISTOffsets(BaseDataset):
    """Fashion-MNIST garments at seeded random offsets on a ``canvas`` × ``canvas`` image.

    Args:
        data_root (str): folder with the four Fashion-MNIST idx files (as
            ``FashionMNISTSubset``). Defaults to Debian's ``/usr/share/datasets/fashion-mnist``.
        split (str): 'train' (60,000 images) or 'test' (10,000).
        canvas (int): side of the black canvas, at least 28. Defaults to 40.
        num_samples (int, optional): keep a seeded class-balanced subset of this size.
        seed (int): seed of the offsets (and of the subset choice). The offsets are drawn for
            the whole split, so a subset keeps its images' places. Defaults to 0.
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments (pipeline, ...).

    Every data item also carries its ``offset`` (dy, dx).
    """
    METAINFO = {'classes': FASHIONMNIST_CATEGORITES}

    def __init__(self,
                 data_root: str = DEBIAN_FASHION_MNIST_ROOT,
                 split: str = 'train',
                 canvas: int = 40,
                 num_samples: Optional[int] = None,
                 seed: int = 0,
                 **kwargs):
        if isinstance(canvas, bool) or not isinstance(canvas, int) or canvas < GARMENT:
            raise ValueError(f'FashionMNISTOffsets: canvas must be an int >= {GARMENT} (the '
                             f'garment size), got {canvas!r}')
        self.split = _check_split(split)
        self.canvas = canvas
        self.num_samples = num_samples
        self.seed = int(seed)
        kwargs.setdefault('ann_file', '')
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> List[dict]:
        images, labels = read_fashion_mnist(self.data_root, self.split)
        # a different stream per split, so test images do not copy the train offsets
        offsets = garment_offsets(len(images), self.canvas,
                                  self.seed * 2 + (self.split == 'test'))
        keep = np.arange(len(images))
        if self.num_samples is not None:
            keep = balanced_subset(labels, int(self.num_samples),
                                   len(self.METAINFO['classes']), self.seed)
        placed = place_on_canvas(images[keep], offsets[keep], self.canvas)
        return [{'img': img, 'gt_label': int(label), 'offset': tuple(int(v) for v in off)}
                for img, label, off in zip(placed, labels[keep], offsets[keep])]

    def extra_repr(self) -> List[str]:
        return [f'Data root: \t{self.data_root}',
                f'Split: \t{self.split} (num_samples={self.num_samples}, seed={self.seed})',
                f'Canvas: \t{self.canvas} x {self.canvas}, garments at random offsets']
