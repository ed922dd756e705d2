"""EpochIndexSampler + SeededDataset: augmentations are a function of (seed, epoch, index)
only, whatever the process RNG history, and the process RNGs are left as they were."""
import random

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.registry import DefaultScope
from mmpretrain.registry import DATA_SAMPLERS, DATASETS

from mmselfsup_vmf.datasets.seeded import SeededDataset, sample_seed

PIPELINE = [dict(type='MultiCrop', num_global=2, num_local=2, global_size=16, local_size=8,
                 interpolation='bilinear'),
            dict(type='PackInputs')]


@pytest.fixture(autouse=True)
def _mmpretrain_scope():
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


def seeded_digits():
    return DATASETS.build(dict(type='SeededDataset', dataset=dict(
        type='SklearnDigits', image_size=16, num_train=32, pipeline=PIPELINE)))


def views(sample):
    return torch.stack([v.float().mean() for v in sample['inputs']] +
                       [v.float().flatten()[:50].sum() for v in sample['inputs']])


def test_sampler_is_default_sampler_order_with_keys():
    data = list(range(13))
    ours = DATA_SAMPLERS.build(dict(type='EpochIndexSampler', shuffle=True, seed=7),
                               default_args=dict(dataset=data))
    ref = DefaultSampler(data, shuffle=True, seed=7)
    for epoch in (0, 3):
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        keys = list(ours)
        assert [k[0] for k in keys] == list(ref)
        assert all(k[1:] == (epoch, 7) for k in keys)
        assert len(ours) == len(ref) == 13


def test_same_key_same_views_whatever_the_rng_history():
    ds = seeded_digits()
    first = views(ds[(5, 2, 0)])
    # disturb every process RNG, then ask again
    random.random()
    np.random.rand(3)
    torch.rand(7)
    assert torch.equal(views(ds[(5, 2, 0)]), first)
    # a fresh dataset object (e.g. a resumed process) gives the same views too
    assert torch.equal(views(seeded_digits()[(5, 2, 0)]), first)
    # other epoch / index / seed -> other augmentations
    assert not torch.equal(views(ds[(5, 3, 0)]), first)
    assert not torch.equal(views(ds[(6, 2, 0)]), first)
    assert not torch.equal(views(ds[(5, 2, 1)]), first)
    # the plain index passes through to the wrapped dataset (same image)
    assert ds[5]['data_samples'].gt_label.item() == ds[(5, 2, 0)]['data_samples'].gt_label.item()


def test_process_rngs_are_restored():
    ds = seeded_digits()
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    ds[(1, 0, 0)]
    assert random.getstate() == states[0]
    np.testing.assert_array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


def test_sample_seed_mixes_all_three_parts():
    seeds = {sample_seed(s, e, i) for s in (0, 1) for e in (0, 1, 2) for i in range(50)}
    assert len(seeds) == 2 * 3 * 50
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)
    assert 0 <= sample_seed(2**40, 5, 9) < 2**32


def test_wrapper_forwards_metainfo_and_length():
    ds = seeded_digits()
    assert len(ds) == 32
    assert ds.metainfo['classes'] == tuple(str(i) for i in range(10))
    assert isinstance(ds, SeededDataset) and ds.num_train == 32
