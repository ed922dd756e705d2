"""DeviceMultiCropInput, the loader side of multi-crop on the device: one area resize that
keeps the aspect ratio (checked against OpenCV directly), zero padding, and an augmentation
seed that is a function of (seed, epoch, index) under SeededDataset."""
import cv2
import numpy as np
import pytest
from mmpretrain.registry import DATASETS, TRANSFORMS


def test_fits_pads_and_records_the_resized_shape():
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out = TRANSFORMS.build(dict(type='DeviceMultiCropInput', size=30))(dict(img=img))
    assert out['img'].shape == (30, 30, 3) and out['img_shape'] == (20, 30)
    np.testing.assert_array_equal(out['img'][:20], cv2.resize(img, (30, 20),
                                                                interpolation=cv2.INTER_AREA))
    assert not out['img'][20:].any()
    grey = TRANSFORMS.build(dict(type='DeviceMultiCropInput', size=8))(
        dict(img=np.full((8, 4), 7, np.uint8)))
    assert grey['img_shape'] == (8, 4) and (grey['img'][:, :4] == 7).all()


def test_bad_image_is_named():
    with pytest.raises(ValueError, match=r'expects an HxWx3 image, got shape \(4, 4, 2\) '
                                         r'\(a\.jpg\)'):
        TRANSFORMS.build(dict(type='DeviceMultiCropInput', size=8))(
            dict(img=np.zeros((4, 4, 2), np.uint8), img_path='a.jpg'))


def test_seed_is_a_function_of_seed_epoch_index():
    ds = DATASETS.build(dict(type='SeededDataset', dataset=dict(
        type='SklearnDigits', image_size=16, num_train=8, pipeline=[
            dict(type='DeviceMultiCropInput', size=16),
            dict(type='PackInputs', meta_keys=('img_shape', 'aug_seed'))])))

    def seed(*key):
        return ds[key]['data_samples'].aug_seed
    np.random.seed(123)
    first = seed(3, 0, 5)
    np.random.rand(7)
    assert seed(3, 0, 5) == first
    assert len({first, seed(3, 1, 5), seed(4, 0, 5), seed(3, 0, 6)}) == 4
