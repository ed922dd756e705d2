"""FashionMNISTOffsets: each garment unchanged at its seeded offset on a black canvas, checked
against idx files written here and, when installed, Debian's files read independently."""
import os.path as osp

import numpy as np
import pytest
from mmengine.registry import init_default_scope
from mmpretrain.registry import DATASETS
from test_small_datasets import make_fake_root

from mmselfsup_vmf.datasets import FashionMNISTOffsets

DEBIAN_ROOT = '/usr/share/datasets/fashion-mnist'


def test_garments_sit_unchanged_at_their_offsets(tmp_path):
    root, arrays = make_fake_root(tmp_path, compress=False)
    init_default_scope('mmpretrain')
    data = DATASETS.build(dict(type='FashionMNISTOffsets', data_root=str(root), split='test',
                               canvas=40, serialize_data=False))
    images, labels = arrays['t10k']
    assert len(data) == 30
    offsets = set()
    for i in range(len(data)):
        info = data.get_data_info(i)
        img, (dy, dx) = info['img'], info['offset']
        assert img.shape == (40, 40, 3) and img.dtype == np.uint8
        assert 0 <= dy <= 12 and 0 <= dx <= 12
        assert info['gt_label'] == labels[i]
        np.testing.assert_array_equal(img[dy:dy + 28, dx:dx + 28, 0], images[i])
        background = img[..., 0].copy()
        background[dy:dy + 28, dx:dx + 28] = 0
        assert not background.any()  # black outside the garment
        assert (img[..., 0] == img[..., 2]).all()
        offsets.add((dy, dx))
    assert len(offsets) > 20  # the objects move (30 draws from 13 x 13 places)


def test_offsets_are_seeded_per_split_and_kept_by_subsets(tmp_path):
    root, _ = make_fake_root(tmp_path, compress=True)

    def offsets(**kw):
        d = FashionMNISTOffsets(data_root=str(root), serialize_data=False, **kw)
        return [d.get_data_info(i)['offset'] for i in range(len(d))]
    train = offsets(split='train')
    assert train == offsets(split='train')  # the same images every time
    assert train != offsets(split='train', seed=1)
    assert train[:30] != offsets(split='test')  # another stream for the test split
    # a balanced subset keeps each image's place in the full split
    sub = FashionMNISTOffsets(data_root=str(root), split='train', num_samples=20,
                              serialize_data=False)
    full = FashionMNISTOffsets(data_root=str(root), split='train', serialize_data=False)
    by_image = {full.get_data_info(i)['img'].tobytes(): full.get_data_info(i)['offset']
                for i in range(len(full))}
    for i in range(len(sub)):
        info = sub.get_data_info(i)
        assert by_image[info['img'].tobytes()] == info['offset']
    # canvas 28: no room to move, the plain dataset
    assert set(offsets(split='test', canvas=28)) == {(0, 0)}


@pytest.mark.parametrize('canvas', [27, 40.0, True])
def test_bad_canvas_is_a_clear_error(tmp_path, canvas):
    with pytest.raises(ValueError, match='canvas must be an int >= 28'):
        FashionMNISTOffsets(data_root=str(tmp_path), canvas=canvas)


@pytest.mark.skipif(not osp.isfile(osp.join(DEBIAN_ROOT, 't10k-images-idx3-ubyte.gz')),
                    reason=f'Debian dataset-fashion-mnist not installed ({DEBIAN_ROOT})')
def test_debian_test_split_on_a_40_px_canvas():
    import gzip
    with gzip.open(osp.join(DEBIAN_ROOT, 't10k-images-idx3-ubyte.gz')) as f:
        ref = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    data = FashionMNISTOffsets(split='test', serialize_data=False)
    assert len(data) == 10000
    for i in (0, 1234, 9999):
        info = data.get_data_info(i)
        dy, dx = info['offset']
        np.testing.assert_array_equal(info['img'][dy:dy + 28, dx:dx + 28, 0], ref[i])
