"""The loader side of multi-crop on the device: one resize, padding and a per-sample seed."""
import numpy as np
from mmcv.image import imresize
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS


@TRANSFORMS.register_module()
class DeviceMultiCropInput(BaseTransform):
    """Fits the image into ``size x size`` (keeping its aspect ratio), pads it there and
    draws the seed of its device augmentations (``MultiCropDataPreprocessor``).

    Sets ``img`` to a ``(size, size, 3)`` uint8 array with the resized image in its top-left
    corner and zeros elsewhere, ``img_shape`` to the resized ``(h, w)`` (the region the crops
    are drawn from) and ``aug_seed`` to an integer from numpy's global RNG, which
    ``SeededDataset`` seeds from (seed, epoch, sample index). The crops are then drawn from
    this ``size``-pixel image rather than the full-resolution one: pick ``size`` near the
    dataset's typical resolution (ImageNet: ~400 px) to keep the global crops sharp.

    Args:
        size (int): side of the square the image is fitted into and padded to.
        interpolation (str): mmcv interpolation when shrinking ('area' averages, so the one
            resize does not alias); enlarging always uses 'bicubic'.
    """

    def __init__(self, size: int, interpolation: str = 'area'):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f'DeviceMultiCropInput size must be a positive int, got {size!r}')
        self.size = size
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'DeviceMultiCropInput expects an HxWx3 image, got shape '
                             f'{img.shape} ({results.get("img_path", "in-memory image")})')
        h, w = img.shape[:2]
        scale = self.size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) != (h, w):
            mode = self.interpolation if scale < 1 else 'bicubic'
            img = imresize(img, (new_w, new_h), interpolation=mode)
        padded = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        padded[:new_h, :new_w] = img
        results['img'] = padded
        results['img_shape'] = (new_h, new_w)
        results['aug_seed'] = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
        return results
