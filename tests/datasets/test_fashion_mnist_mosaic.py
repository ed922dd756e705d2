"""FashionMNISTMosaic: garment mosaics with per-pixel labels, checked against hand-built maps
and against Debian's Fashion-MNIST files read independently (gzip + numpy)."""
import gzip
import os.path as osp

import numpy as np
import pytest
from mmengine.registry import init_default_scope

from mmselfsup_vmf.datasets.fashion_mnist_mosaic import FashionMNISTMosaic, garment_mosaics

ROOT = '/usr/share/datasets/fashion-mnist'
needs_data = pytest.mark.skipif(
    not osp.isfile(osp.join(ROOT, 't10k-images-idx3-ubyte.gz')),
    reason=f'Debian dataset-fashion-mnist not installed ({ROOT})')


def test_cells_and_labels_match_a_hand_built_mosaic():
    a = np.zeros((28, 28), np.uint8)
    a[2:10, 3:7] = 200       # garment 0 (class 4): a bar
    a[20, 20] = 10           # below the threshold: background
    b = np.full((28, 28), 50, np.uint8)  # garment 1 (class 9): the whole cell
    images, labels = np.stack([a, b]), np.array([4, 9])
    grey, seg = garment_mosaics(images, labels, num_mosaics=30, grid=2, fill_prob=1.0,
                                max_shift=0, threshold=16, seed=3)
    assert grey.shape == seg.shape == (30, 56, 56)
    for g, s in zip(grey, seg):
        for r in range(2):
            for c in range(2):
                cell_g = g[28 * r:28 * r + 28, 28 * c:28 * c + 28]
                cell_s = s[28 * r:28 * r + 28, 28 * c:28 * c + 28]
                if cell_g[0, 0] == 50:  # garment 1
                    assert (cell_s == 10).all()
                else:
                    expected = np.zeros((28, 28), np.uint8)
                    expected[2:10, 3:7] = 5
                    np.testing.assert_array_equal(cell_s, expected)
                    np.testing.assert_array_equal(cell_g, np.where(a > 16, a, 0))
    # both garments occur (uniform choice), and a different seed gives other mosaics
    assert {5, 10} <= set(np.unique(seg))
    assert not np.array_equal(garment_mosaics(images, labels, 30, seed=4)[1],
                              garment_mosaics(images, labels, 30, seed=3)[1])


def test_shifted_garment_is_cut_at_the_canvas_border_and_omitted_cells_stay_empty():
    full = np.full((1, 28, 28), 255, np.uint8)
    grey, seg = garment_mosaics(full, np.array([0]), num_mosaics=200, grid=1, fill_prob=0.5,
                                max_shift=4, seed=0)
    empty = seg.reshape(200, -1).max(1) == 0
    assert 60 < empty.sum() < 140  # fill_prob 0.5
    for s in seg[~empty]:  # a 28x28 block moved by <= 4 px, cut to the 28x28 canvas
        rows, cols = np.flatnonzero(s.any(1)), np.flatnonzero(s.any(0))
        assert 24 <= len(rows) <= 28 and 24 <= len(cols) <= 28
        assert (rows[0] == 0 or rows[-1] == 27) and (cols[0] == 0 or cols[-1] == 27)
        assert (s[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] == 1).all()


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r'images must have shape \(N, 28, 28\)'):
        garment_mosaics(np.zeros((2, 32, 32), np.uint8), np.zeros(2), 1)
    with pytest.raises(ValueError, match='max_shift'):
        garment_mosaics(np.zeros((2, 28, 28), np.uint8), np.zeros(2), 1, max_shift=28)
    init_default_scope('mmseg')
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        FashionMNISTMosaic(data_root=str(tmp_path))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        FashionMNISTMosaic(split='val')


def _masked_test_images():
    with gzip.open(osp.join(ROOT, 't10k-images-idx3-ubyte.gz'), 'rb') as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28 * 28)
    return set(map(bytes, np.where(images > 16, images, 0)))


@needs_data
def test_val_mosaics_are_made_of_test_images_and_train_mosaics_are_not():
    init_default_scope('mmseg')
    test_cells = _masked_test_images()
    for split in ('train', 'test'):
        ds = FashionMNISTMosaic(split=split, num_mosaics=20, max_shift=0, fill_prob=1.0,
                                seed=5)
        assert len(ds) == 20 and len(ds.metainfo['classes']) == 11
        for i in range(20):
            info = ds.get_data_info(i)
            img, seg = info['img'], info['gt_seg_map']
            assert img.shape == (56, 56, 3) and seg.shape == (56, 56)
            for r in range(2):
                for c in range(2):
                    cell = np.ascontiguousarray(img[28 * r:28 * r + 28, 28 * c:28 * c + 28, 0])
                    assert (bytes(cell) in test_cells) == (split == 'test')
    again = FashionMNISTMosaic(split='test', num_mosaics=20, max_shift=0, fill_prob=1.0, seed=5)
    for i in range(20):  # seeded: the same mosaics again
        np.testing.assert_array_equal(again.get_data_info(i)['img'], ds.get_data_info(i)['img'])
