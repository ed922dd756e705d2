"""Two small labelled image datasets that work fully offline (docs/install.md#offline-datasets).

Both keep every image in memory as an ``HxWx3`` uint8 array under ``img`` (like mmpretrain's
``MNIST``, which stores ``img`` instead of ``img_path``), so a pipeline starts directly with
the transforms (no ``LoadImageFromFile``) and ends with ``PackInputs``.

- ``SklearnDigits``: scikit-learn's ``load_digits`` (1,797 images, 8x8, values 0-16). For tests.
- ``FashionMNISTSubset``: the Fashion-MNIST idx files shipped by Debian's
  ``dataset-fashion-mnist`` (or any copy of them, gzipped or not). The embedded demo dataset.
"""
import functools
import gzip
import os
import os.path as osp
from typing import List, Optional, Tuple

import cv2
import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.datasets.categories import FASHIONMNIST_CATEGORITES
from mmpretrain.registry import DATASETS

#: Where Debian's ``dataset-fashion-mnist`` package installs the four idx files.
DEBIAN_FASHION_MNIST_ROOT = '/usr/share/datasets/fashion-mnist'

FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

# idx magic numbers: 0x0000 08 (unsigned byte) followed by the number of dimensions.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


def _check_split(split: str) -> str:
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def grey_to_rgb_uint8(images: np.ndarray, image_size: int) -> np.ndarray:
    """(N, h, w) uint8 -> (N, S, S, 3) uint8, bilinear resize (skipped when h == w == S)."""
    if int(image_size) < 1:
        raise ValueError(f'image_size must be >= 1, got {image_size}')
    n, h, w = images.shape
    if (h, w) != (image_size, image_size):
        resized = np.empty((n, image_size, image_size), dtype=np.uint8)
        for i in range(n):
            resized[i] = cv2.resize(images[i], (image_size, image_size),
                                    interpolation=cv2.INTER_LINEAR)
        images = resized
    return np.repeat(images[..., None], 3, axis=-1)


def _to_data_list(images: np.ndarray, labels: np.ndarray) -> List[dict]:
    return [{'img': img, 'gt_label': int(label)} for img, label in zip(images, labels)]


@functools.lru_cache(maxsize=1)
def _load_sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float images in 0-16 and (1797,) labels, read once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a listed dependency
        raise ImportError('SklearnDigits needs scikit-learn: pip install scikit-learn') from e
    digits = load_digits()
    images, labels = digits.images, digits.target
    images.flags.writeable = False  # shared by every instance through the cache
    labels.flags.writeable = False
    return images, labels


@DATASETS.register_module()
class SklearnDigits(BaseDataset):
    """scikit-learn's 8x8 digits as an in-memory mmpretrain dataset.

    Pixel values 0-16 are mapped to 0-255 (``round(v * 255 / 16)``), resized bilinearly to
    ``image_size`` and repeated to 3 channels. The split is a seeded permutation of the
    1,797 images: the first ``num_train`` go to ``train``, the rest to ``test``.

    Args:
        split (str): 'train' or 'test'.
        image_size (int): output side length. Defaults to 32.
        num_train (int): size of the train split, 1 <= num_train < 1797. Defaults to 1300.
        seed (int): seed of the split permutation. Defaults to 0.
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments (pipeline, ...).
    """
    METAINFO = {'classes': tuple(str(i) for i in range(10))}

    def __init__(self,
                 split: str = 'train',
                 image_size: int = 32,
                 num_train: int = 1300,
                 seed: int = 0,
                 **kwargs):
        self.split = _check_split(split)
        self.image_size = int(image_size)
        self.num_train = int(num_train)
        self.seed = int(seed)
        kwargs.setdefault('ann_file', '')
        # 1,797 tiny images: serialising them buys nothing, and mmengine's serialisation
        # runs a full gc.collect() (~0.5 s in a process that imported the whole stack).
        kwargs.setdefault('serialize_data', False)
        super().__init__(**kwargs)

    def load_data_list(self) -> List[dict]:
        images, labels = _load_sklearn_digits()
        if not 1 <= self.num_train < len(images):
            raise ValueError(f'num_train must be in [1, {len(images) - 1}], got {self.num_train}')
        order = np.random.default_rng(self.seed).permutation(len(images))
        keep = order[:self.num_train] if self.split == 'train' else order[self.num_train:]
        grey = np.rint(images[keep] * (255.0 / 16.0)).astype(np.uint8)
        return _to_data_list(grey_to_rgb_uint8(grey, self.image_size), labels[keep])

    def extra_repr(self) -> List[str]:
        return [f'Split: \t{self.split} (num_train={self.num_train}, seed={self.seed})',
                f'Image size: \t{self.image_size}']


def _missing_root_error(data_root: str) -> FileNotFoundError:
    return FileNotFoundError(
        f'Fashion-MNIST not found in {data_root!r} (missing or empty); install it with '
        f'`apt-get install dataset-fashion-mnist` (files go to {DEBIAN_FASHION_MNIST_ROOT})')


def _find_idx_file(data_root: str, name: str) -> str:
    for candidate in (name, name + '.gz'):
        path = osp.join(data_root, candidate)
        if osp.isfile(path):
            return path
    raise FileNotFoundError(f'Fashion-MNIST file {name}[.gz] not found in {data_root!r}; '
                            'install it with `apt-get install dataset-fashion-mnist`')


def read_idx_file(path: str, expected_magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzipped or not) into an (N, ...) uint8 array.

    Layout: a big-endian int32 magic (0x0801 labels, 0x0803 images), then one big-endian
    int32 per dimension, then the raw bytes.
    """
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f'{path}: too short to be an idx file ({len(raw)} bytes)')
    magic = int.from_bytes(raw[:4], 'big')
    if magic != expected_magic:
        raise ValueError(f'{path}: idx magic {magic:#010x}, expected {expected_magic:#010x}')
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f'{path}: {len(raw)} bytes, expected {expected} for shape {shape}')
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(data_root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) labels of a Fashion-MNIST split ('train'/'test')."""
    _check_split(split)
    if not data_root or not osp.isdir(data_root) or not os.listdir(data_root):
        raise _missing_root_error(data_root)
    images_name, labels_name = FASHION_MNIST_FILES[split]
    images = read_idx_file(_find_idx_file(data_root, images_name), _IDX_IMAGES_MAGIC)
    labels = read_idx_file(_find_idx_file(data_root, labels_name), _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f'{data_root}: {len(images)} images but {len(labels)} labels '
                         f'in the {split} split')
    return images, labels


def balanced_subset(labels: np.ndarray, num_samples: int, num_classes: int,
                    seed: int) -> np.ndarray:
    """Sorted indices of a seeded class-balanced subset.

    Class ``c`` gets ``num_samples // C`` samples, plus one for the first
    ``num_samples % C`` classes; within a class the samples are a seeded random choice.
    """
    if not 1 <= num_samples <= len(labels):
        raise ValueError(f'num_samples must be in [1, {len(labels)}], got {num_samples}')
    rng = np.random.default_rng(seed)
    base, extra = divmod(num_samples, num_classes)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        want = base + (1 if c < extra else 0)
        if want > len(members):
            raise ValueError(f'num_samples={num_samples} needs {want} images of class {c}, '
                             f'only {len(members)} exist')
        chosen.append(rng.permutation(members)[:want])
    return np.sort(np.concatenate(chosen))


@DATASETS.register_module()
class FashionMNISTSubset(BaseDataset):
    """Fashion-MNIST read straight from the four idx files, optionally a balanced subset.

    Unlike mmpretrain's ``FashionMNIST`` there is no download and no md5 check (its md5
    list does not match Debian's files), and the ``.gz`` files are read as they are.

    Args:
        data_root (str): folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
            Defaults to Debian's ``/usr/share/datasets/fashion-mnist``.
        split (str): 'train' (60,000 images) or 'test' (10,000).
        num_samples (int, optional): keep a seeded class-balanced subset of this size.
        image_size (int): output side length (28 -> image_size, bilinear). Defaults to 32.
        seed (int): seed of the subset choice. Defaults to 0.
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments (pipeline, ...).
    """
    METAINFO = {'classes': FASHIONMNIST_CATEGORITES}

    def __init__(self,
                 data_root: str = DEBIAN_FASHION_MNIST_ROOT,
                 split: str = 'train',
                 num_samples: Optional[int] = None,
                 image_size: int = 32,
                 seed: int = 0,
                 **kwargs):
        self.split = _check_split(split)
        self.num_samples = num_samples
        self.image_size = int(image_size)
        self.seed = int(seed)
        kwargs.setdefault('ann_file', '')
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> List[dict]:
        images, labels = read_fashion_mnist(self.data_root, self.split)
        if self.num_samples is not None:
            keep = balanced_subset(labels, int(self.num_samples), len(self.METAINFO['classes']),
                                   self.seed)
            images, labels = images[keep], labels[keep]
        return _to_data_list(grey_to_rgb_uint8(images, self.image_size), labels)

    def extra_repr(self) -> List[str]:
        return [f'Data root: \t{self.data_root}',
                f'Split: \t{self.split} (num_samples={self.num_samples}, seed={self.seed})',
                f'Image size: \t{self.image_size}']
