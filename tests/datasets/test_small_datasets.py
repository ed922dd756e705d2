"""SklearnDigits and FashionMNISTSubset: contents, splits, determinism, pipelines, errors."""
import gzip
import os
import shutil

import numpy as np
import pytest
import torch
from mmpretrain.registry import DATASETS
from sklearn.datasets import load_digits

DEBIAN_ROOT = '/usr/share/datasets/fashion-mnist'


def _interp_matrix(n_in, n_out):
    """(n_out, n_in) bilinear weights: half-pixel centres, clamped at the edges."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = min(max((o + 0.5) * n_in / n_out - 0.5, 0), n_in - 1)
        x0 = int(np.floor(x))
        x1, f = min(x0 + 1, n_in - 1), x - x0
        m[o, x0] += 1 - f
        m[o, x1] += f
    return m


def bilinear_half_pixel(img, size):
    """Independent float64 bilinear resize (separable: rows then columns)."""
    h, w = img.shape
    return _interp_matrix(h, size) @ img @ _interp_matrix(w, size).T


def images_of(dataset):
    return np.stack([dataset.get_data_info(i)['img'] for i in range(len(dataset))])


# ---- SklearnDigits ----------------------------------------------------------------------
def test_digits_split_sizes_shapes_and_pixels():
    train = DATASETS.build(dict(type='SklearnDigits', split='train', image_size=8))
    test = DATASETS.build(dict(type='SklearnDigits', split='test', image_size=8))
    assert (len(train), len(test)) == (1300, 497)
    assert len(train.metainfo['classes']) == 10
    ref = load_digits()
    ref_pixels = np.rint(ref.images * 255 / 16).astype(np.uint8).reshape(len(ref.images), -1)
    ref_keys = {}
    for i, (px, y) in enumerate(zip(ref_pixels, ref.target)):
        ref_keys.setdefault((px.tobytes(), int(y)), []).append(i)
    used = []
    for ds in (train, test):
        imgs, labels = images_of(ds), ds.get_gt_labels()
        assert imgs.dtype == np.uint8 and imgs.shape[1:] == (8, 8, 3)
        assert (imgs[..., 0] == imgs[..., 1]).all() and (imgs[..., 0] == imgs[..., 2]).all()
        for img, y in zip(imgs, labels):
            # every (image, label) pair is one of sklearn's, pixel values 0-16 -> 0-255
            matches = ref_keys[(img[..., 0].reshape(-1).tobytes(), int(y))]
            used.append(matches.pop())
    assert sorted(used) == list(range(1797))  # disjoint splits that cover all 1797 images


def test_digits_split_is_deterministic_and_seeded():
    a = DATASETS.build(dict(type='SklearnDigits', split='test', image_size=8))
    b = DATASETS.build(dict(type='SklearnDigits', split='test', image_size=8))
    c = DATASETS.build(dict(type='SklearnDigits', split='test', image_size=8, seed=1))
    np.testing.assert_array_equal(images_of(a), images_of(b))
    np.testing.assert_array_equal(a.get_gt_labels(), b.get_gt_labels())
    assert not np.array_equal(a.get_gt_labels(), c.get_gt_labels())
    # the test split is not one class block: it holds every digit
    assert set(a.get_gt_labels().tolist()) == set(range(10))


def test_digits_upsampling_is_bilinear():
    small = DATASETS.build(dict(type='SklearnDigits', split='test', image_size=8))
    big = DATASETS.build(dict(type='SklearnDigits', split='test', image_size=32))
    assert big.get_data_info(0)['img'].shape == (32, 32, 3)
    for i in range(5):
        expected = bilinear_half_pixel(small.get_data_info(i)['img'][..., 0].astype(float), 32)
        got = big.get_data_info(i)['img'][..., 0].astype(float)
        assert np.abs(got - expected).max() <= 1.0  # cv2 rounds in fixed point


def test_digits_work_with_mmpretrain_pipeline():
    ds = DATASETS.build(dict(
        type='SklearnDigits', split='train', image_size=32,
        pipeline=[dict(type='RandomResizedCrop', scale=16, crop_ratio_range=(0.5, 1.0)),
                  dict(type='RandomFlip', prob=0.5), dict(type='PackInputs')]))
    item = ds[3]
    assert item['inputs'].shape == (3, 16, 16) and item['inputs'].dtype == torch.uint8
    assert int(item['data_samples'].gt_label) == int(ds.get_gt_labels()[3])
    assert item['data_samples'].sample_idx == 3


@pytest.mark.parametrize('kwargs, match', [(dict(split='val'), "split must be 'train' or"),
                                           (dict(num_train=1797), 'num_train must be in'),
                                           (dict(image_size=0), 'image_size must be >= 1')])
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DATASETS.build(dict(type='SklearnDigits', **kwargs))


# ---- FashionMNISTSubset on idx files written here ---------------------------------------
def write_idx(path, array, magic, compress):
    header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path + '.gz', 'wb') if compress else open(path, 'wb')) as f:
        f.write(data)


def make_fake_root(root, compress):
    """Random 28x28 images in the four Fashion-MNIST idx files (60 train, 30 test)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (('train', 60), ('t10k', 30)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(str(root / f'{prefix}-images-idx3-ubyte'), images, 0x803, compress)
        write_idx(str(root / f'{prefix}-labels-idx1-ubyte'), labels, 0x801, compress)
        arrays[prefix] = (images, labels)
    return root, arrays


@pytest.fixture
def fake_fashion_root(tmp_path):
    return make_fake_root(tmp_path, compress=True)


# serialize_data=False only to skip mmengine's gc.collect() per build in these small tests.
@pytest.mark.parametrize('compress', [True, False], ids=['gz', 'raw'])
def test_fashion_reads_idx_files_exactly(tmp_path, compress):
    root, arrays = make_fake_root(tmp_path, compress)
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        ds = DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(root), split=split,
                                 image_size=28, serialize_data=False))
        images, labels = arrays[prefix]
        got = images_of(ds)
        assert got.shape == images.shape + (3, ) and got.dtype == np.uint8
        np.testing.assert_array_equal(got[..., 1], images)
        np.testing.assert_array_equal(ds.get_gt_labels(), labels)
    assert ds.metainfo['classes'][0] == 'T-shirt/top'


def test_fashion_resize_and_balanced_subset(fake_fashion_root):
    root, arrays = fake_fashion_root
    cfg = dict(type='FashionMNISTSubset', data_root=str(root), split='train', num_samples=23,
               serialize_data=False)
    a, b = DATASETS.build(cfg), DATASETS.build(cfg)
    c = DATASETS.build(dict(cfg, seed=5))
    assert len(a) == 23 and a.get_data_info(0)['img'].shape == (32, 32, 3)
    # 23 = 2 per class + 1 extra for classes 0-2
    np.testing.assert_array_equal(np.bincount(a.get_gt_labels(), minlength=10),
                                  [3, 3, 3, 2, 2, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(images_of(a), images_of(b))
    assert not np.array_equal(images_of(a), images_of(c))
    # each kept image is one of the originals, resized bilinearly
    originals = arrays['train'][0]
    img = a.get_data_info(0)['img'][..., 0].astype(float)
    errors = [np.abs(img - bilinear_half_pixel(o.astype(float), 32)).max() for o in originals]
    assert min(errors) <= 1.0


def test_fashion_errors(tmp_path):
    (tmp_path / 'fake').mkdir()
    root, _ = make_fake_root(tmp_path / 'fake', compress=False)
    missing = tmp_path / 'nowhere'
    with pytest.raises(FileNotFoundError, match='nowhere.*apt-get install dataset-fashion-mnist'):
        DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(missing)))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='empty.*apt-get install dataset-fashion-mnist'):
        DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(empty)))
    with pytest.raises(ValueError, match='num_samples must be in'):
        DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(root), num_samples=61,
                            serialize_data=False))
    for name in os.listdir(root):  # swap images and labels: wrong magic number
        if name.startswith('t10k-images'):
            shutil.copy(root / name.replace('images-idx3', 'labels-idx1'), root / name)
    with pytest.raises(ValueError, match='idx magic 0x00000801, expected 0x00000803'):
        DATASETS.build(dict(type='FashionMNISTSubset', data_root=str(root), split='test'))


# ---- FashionMNISTSubset on Debian's package ---------------------------------------------
@pytest.mark.filterwarnings('ignore:The given NumPy array is not writable')
@pytest.mark.skipif(not os.path.isdir(DEBIAN_ROOT),
                    reason=f'{DEBIAN_ROOT} missing: apt-get install dataset-fashion-mnist')
def test_fashion_debian_files_match_mmpretrain_reader():
    from mmpretrain.datasets.mnist import read_sn3_pascalvincent_tensor as read_idx
    test = DATASETS.build(dict(type='FashionMNISTSubset', split='test', image_size=28))
    assert len(test) == 10000
    np.testing.assert_array_equal(np.bincount(test.get_gt_labels()), [1000] * 10)
    with gzip.open(f'{DEBIAN_ROOT}/t10k-images-idx3-ubyte.gz') as f:
        ref_images = read_idx(f).numpy()
    with gzip.open(f'{DEBIAN_ROOT}/t10k-labels-idx1-ubyte.gz') as f:
        ref_labels = read_idx(f).numpy()
    np.testing.assert_array_equal(images_of(test)[..., 0], ref_images)
    np.testing.assert_array_equal(test.get_gt_labels(), ref_labels)
    train = DATASETS.build(dict(type='FashionMNISTSubset', split='train', num_samples=1000))
    assert len(train) == 1000 and train.get_data_info(0)['img'].shape == (32, 32, 3)
    np.testing.assert_array_equal(np.bincount(train.get_gt_labels()), [100] * 10)
