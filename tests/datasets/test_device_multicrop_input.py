"""DeviceMultiCropInput, the loader side of multi-crop on the device: one area resize that
keeps the aspect ratio (checked against OpenCV directly), zero padding, and an augmentation
seed that is a function of (seed, epoch, index) under SeededDataset, and the views' parameters
drawn in the loader (the data preprocessor only stacks them)."""
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


def test_views_from_the_loaders_parameters_equal_views_drawn_in_the_training_process(
        monkeypatch):
    """The loader draws every view's parameters (``crop_params``); the data preprocessor
    then draws nothing, and its views are bitwise those it makes when it draws them itself
    from the samples' ``aug_seed`` (the path of a loader without the laws)."""
    import torch
    from mmengine.dataset import default_collate
    from mmpretrain.registry import MODELS

    from mmselfsup_vmf.models.utils import multicrop_preprocessor
    pytest.importorskip('kornia', reason='the device path needs kornia')
    laws = dict(num_global=2, num_local=2, global_size=16, local_size=8,
                global_scale=(0.4, 1.0), local_scale=(0.1, 0.4))
    pipeline = [dict(type='DeviceMultiCropInput', size=16, **laws),
                dict(type='PackInputs', meta_keys=('img_shape', 'aug_seed', 'crop_params'))]
    ds = DATASETS.build(dict(type='SeededDataset', dataset=dict(
        type='SklearnDigits', image_size=16, num_train=8, pipeline=pipeline)))
    pre = MODELS.build(dict(type='MultiCropDataPreprocessor', mean=[0.0] * 3, std=[1.0] * 3,
                            interpolation='bilinear', **laws))
    batch = default_collate([ds[(i, 0, 7)] for i in range(4)])
    assert batch['data_samples'][0].crop_params['box'].shape == (4, 4)

    def fresh():
        return dict(inputs=batch['inputs'].clone(), data_samples=batch['data_samples'])
    drawn = []
    law = multicrop_preprocessor.draw_sample_params
    monkeypatch.setattr(multicrop_preprocessor, 'draw_sample_params',
                        lambda *a, **k: drawn.append(1) or law(*a, **k))
    torch.manual_seed(0)
    from_loader = pre(fresh(), training=True)['inputs']
    assert drawn == []
    for sample in batch['data_samples']:
        del sample.crop_params
    torch.manual_seed(0)
    in_process = pre(fresh(), training=True)['inputs']
    assert len(drawn) == 4
    for a, b in zip(from_loader, in_process):
        assert torch.equal(a, b)
