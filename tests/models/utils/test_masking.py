"""Block masking (iBOT / DINOv2 semantics) and the masking data preprocessor."""
import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS, TRANSFORMS
from scipy import ndimage

from mmselfsup_vmf.models.utils.masking import (
    block_mask,
    generate_masks,
    ibot_mask_ratios,
    stratified_mask_ratios,
)

GRID = (14, 14)
N = 196


# ----------------------------------------------------------------------------- ratios
def test_stratified_ratios_one_per_bin():
    # batch 8, p=0.5 -> int(4.0) = 4 masked crops; bins of linspace(0.1, 0.5, 5).
    edges = [0.1, 0.2, 0.3, 0.4, 0.5]
    position_counts = np.zeros(8)
    for seed in range(300):
        ratios = stratified_mask_ratios(8, np.random.default_rng(seed), 0.5, (0.1, 0.5))
        assert ratios.shape == (8, )
        masked = np.sort(ratios[ratios > 0])
        assert len(masked) == 4
        for i, r in enumerate(masked):
            assert edges[i] <= r <= edges[i + 1]
        position_counts += ratios > 0
    # shuffled: each of the 8 slots is masked about half of the time (300 * 0.5 = 150).
    assert position_counts.min() > 105 and position_counts.max() < 195


def test_stratified_ratios_odd_batch_and_uniform_in_bin():
    # batch 7, p=0.5 -> int(3.5) = 3 masked, bins linspace(0.1, 0.5, 4) = [.1, .2333, .3667, .5]
    lows = []
    for seed in range(2000):
        ratios = stratified_mask_ratios(7, np.random.default_rng(seed), 0.5, (0.1, 0.5))
        masked = np.sort(ratios[ratios > 0])
        assert len(masked) == 3 and (ratios == 0).sum() == 4
        assert 0.1 <= masked[0] <= 0.1 + 0.4 / 3 <= masked[1] <= 0.1 + 0.8 / 3 <= masked[2] <= 0.5
        lows.append(masked[0])
    # U(0.1, 0.2333): mean 0.16667, sd 0.0385 -> standard error 0.00086.
    assert abs(np.mean(lows) - (0.1 + 0.2 / 3)) < 0.004
    assert abs(np.std(lows) - (0.4 / 3) / np.sqrt(12)) < 0.003


def test_stratified_ratios_edge_probabilities():
    rng = np.random.default_rng(0)
    assert (stratified_mask_ratios(6, rng, 0.0) == 0).all()
    full = stratified_mask_ratios(6, rng, 1.0, (0.1, 0.5))
    assert (full > 0).all()
    with pytest.raises(ValueError, match='mask_probability'):
        stratified_mask_ratios(4, rng, 1.5)
    with pytest.raises(ValueError, match='ratio_range'):
        stratified_mask_ratios(4, rng, 0.5, (0.5, 0.1))


def test_ibot_ratios_published_recipe():
    # pred_ratio (0, 0.3), var (0, 0.2): half 0, half U(0.1, 0.5), per crop independently.
    ratios = ibot_mask_ratios(20000, np.random.default_rng(1), (0.0, 0.3), (0.0, 0.2))
    zero = ratios == 0
    assert abs(zero.mean() - 0.5) < 0.015  # binomial sd 0.0035
    nonzero = ratios[~zero]
    assert nonzero.min() >= 0.1 and nonzero.max() <= 0.5
    assert abs(nonzero.mean() - 0.3) < 0.005  # sd 0.115 / sqrt(10000)
    # uniform: the deciles of U(0.1, 0.5)
    np.testing.assert_allclose(np.quantile(nonzero, np.linspace(0.1, 0.9, 9)),
                               0.1 + 0.4 * np.linspace(0.1, 0.9, 9), atol=0.01)


def test_ibot_ratios_scalar_and_errors():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(ibot_mask_ratios(5, rng, 0.3, 0.0), np.full(5, 0.3))
    r = ibot_mask_ratios(1000, rng, 0.3, 0.1)
    assert r.min() >= 0.2 and r.max() <= 0.4
    # a scalar variance applies to every listed ratio (as iBOT)
    r = ibot_mask_ratios(1000, rng, [0.2, 0.6], 0.1)
    assert ((r >= 0.1) & (r <= 0.3) | (r >= 0.5) & (r <= 0.7)).all()
    with pytest.raises(ValueError, match='var <= ratio'):
        ibot_mask_ratios(2, rng, 0.1, 0.2)
    with pytest.raises(ValueError, match='length'):
        ibot_mask_ratios(2, rng, [0.1, 0.3], [0.0, 0.1, 0.1])


# ----------------------------------------------------------------------------- blocks
def test_block_mask_count_within_beit_shortfall():
    rng = np.random.default_rng(0)
    shortfall = []
    for _ in range(400):
        num = int(rng.uniform(0.1, 0.5) * N)
        mask = block_mask(GRID, num, rng, min_patches=4, max_patches=98)
        assert mask.dtype == bool and mask.shape == GRID
        assert mask.sum() <= num  # a block never exceeds the remaining budget
        shortfall.append(num - mask.sum())
    shortfall = np.array(shortfall)
    # BEiT stops after 10 failed attempts; measured: ~7% of masks fall short, mean 0.07.
    assert (shortfall == 0).mean() > 0.85
    assert shortfall.mean() < 0.5 and np.quantile(shortfall, 0.99) <= 6


def test_block_mask_min_patches_sets_first_block_size():
    # num_masked = min_patches = 36: every area draw is exactly 36, so the first block is
    # round(sqrt(36 rho)) x round(sqrt(36 / rho)) with rho in [0.3, 3.33]: at least
    # (sqrt(36 * 3.33) - .5) * (sqrt(36 / 3.33) - .5) = 29.1 -> >= 30 patches in one piece.
    rng = np.random.default_rng(2)
    small_first = 0
    for _ in range(200):
        mask = block_mask(GRID, 36, rng, min_patches=36)
        labels, _ = ndimage.label(mask)
        assert np.bincount(labels.ravel())[1:].max() >= 30
        loose = block_mask(GRID, 36, rng, min_patches=1)
        labels, _ = ndimage.label(loose)
        small_first += np.bincount(labels.ravel())[1:].max() < 30
    assert small_first > 20  # without the minimum, smaller pieces are common


def test_block_mask_square_aspect_and_inclusive_placement():
    rng = np.random.default_rng(3)
    mask = block_mask(GRID, 25, rng, min_patches=25, aspect=(1.0, 1.0))
    rows, cols = np.nonzero(mask)
    assert mask.sum() == 25 and np.ptp(rows) == 4 and np.ptp(cols) == 4  # one 5x5 square
    # 1x1 blocks land on every cell, including the last row and column (BEiT's randint
    # is inclusive; an exclusive upper bound would never reach them).
    hits = np.zeros((4, 4))
    for _ in range(1600):
        hits += block_mask((4, 4), 1, rng, min_patches=1, aspect=(1.0, 1.0))
    assert hits.min() > 50


def test_block_mask_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='num_masked'):
        block_mask(GRID, N + 1, rng)
    with pytest.raises(ValueError, match='aspect'):
        block_mask(GRID, 10, rng, aspect=(2.0, 1.0))


# ----------------------------------------------------------------------------- generate
def test_generate_masks_stratified_counts():
    # 8 crops on 14x14, p=0.5: 4 masked with counts in the bins of int(196 * e).
    upper = [39, 58, 78, 98]  # int(196 * [0.2, 0.3, 0.4, 0.5])
    lower = [19, 39, 58, 78]  # int(196 * [0.1, 0.2, 0.3, 0.4])
    for seed in range(50):
        masks = generate_masks(8, GRID, 'stratified', np.random.default_rng([seed, 0, 0]),
                               mask_probability=0.5, ratio_range=(0.1, 0.5))
        assert masks.shape == (8, 14, 14) and masks.dtype == bool
        counts = np.sort(masks.reshape(8, -1).sum(1))
        assert (counts[:4] == 0).all()
        assert (counts[4:] <= upper).all() and (counts[4:] >= np.array(lower) - 12).all()


def test_generate_masks_ibot_counts_and_rand_shape():
    masks = generate_masks(400, GRID, 'ibot', np.random.default_rng(0))
    counts = masks.reshape(400, -1).sum(1)
    assert abs((counts == 0).mean() - 0.5) < 0.1
    nonzero = counts[counts > 0]
    # int(196 * U(0.1, 0.5)) minus BEiT's shortfall (larger with iBOT's 16-patch minimum)
    assert nonzero.max() <= 98 and nonzero.min() >= 19 - 16
    assert abs(nonzero.mean() - (0.3 * 196 - 0.5)) < 4
    # 'rand': exactly int(0.3 * 196) = 58 patches
    rand = generate_masks(10, GRID, 'ibot', np.random.default_rng(0), pred_ratio=0.3,
                          pred_ratio_var=0.0, pred_shape='rand')
    assert (rand.reshape(10, -1).sum(1) == 58).all()


def test_generate_masks_determinism_and_errors():
    a = generate_masks(16, GRID, 'ibot', np.random.default_rng([0, 5, 0]))
    b = generate_masks(16, GRID, 'ibot', np.random.default_rng([0, 5, 0]))
    c = generate_masks(16, GRID, 'ibot', np.random.default_rng([0, 6, 0]))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    with pytest.raises(TypeError, match='mask_probability'):
        generate_masks(2, GRID, 'ibot', np.random.default_rng(0), mask_probability=0.5)
    with pytest.raises(ValueError, match='mask mode'):
        generate_masks(2, GRID, 'beit', np.random.default_rng(0))
    with pytest.raises(TypeError, match='rng'):
        generate_masks(2, GRID, 'ibot')


# ----------------------------------------------------------------------------- preprocessor
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _sample_batch(num_images=3, global_size=32, local_size=16, num_local=3):
    from skimage import data as skdata
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    pipeline = [
        dict(type='MultiView', num_views=[2, num_local], transforms=[
            [dict(type='RandomResizedCrop', scale=global_size, crop_ratio_range=(0.25, 1.0)),
             dict(type='RandomFlip', prob=0.5)],
            [dict(type='RandomResizedCrop', scale=local_size, crop_ratio_range=(0.05, 0.25))],
        ]),
        dict(type='PackInputs'),
    ]
    # MultiView builds its inner transforms through the default scope.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        transforms = [TRANSFORMS.build(t) for t in pipeline]
    results = []
    for i in range(num_images):
        # BGR, as mmcv loads images
        item = dict(img=np.ascontiguousarray(photos[i % len(photos)][..., ::-1]))
        for t in transforms:
            item = t(item)
        results.append(item)
    return default_collate(results)


def _build_preprocessor(epoch=0, iteration=0, **kwargs):
    cfg = dict(type='MaskedSelfSupDataPreprocessor', mean=MEAN, std=STD, to_rgb=True,
               patch_size=4)
    cfg.update(kwargs)
    preprocessor = MODELS.build(cfg)
    preprocessor.set_train_progress(epoch, iteration)  # what the algorithm forwards
    return preprocessor


def test_preprocessor_normalises_and_masks_global_views():
    batch = _sample_batch()
    raw_views = [v.clone() for v in batch['inputs']]
    out = _build_preprocessor(iteration=7)(batch, training=True)
    views = out['inputs']
    assert [tuple(v.shape) for v in views] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 3
    # BGR -> RGB then (x - mean) / std, computed here in float64
    expected = (raw_views[0].double()[:, [2, 1, 0]] - torch.tensor(MEAN, dtype=torch.float64)
                .view(1, 3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(views[0].double(), expected, rtol=0, atol=1e-5)
    masks = torch.stack([s.mask for s in out['data_samples']])
    assert masks.shape == (3, 2, 8, 8) and masks.dtype == torch.bool
    # default iBOT mode on an 8x8 grid: ratio 0 or U(0.1, 0.5) -> at most int(0.5 * 64)
    assert masks.flatten(2).sum(-1).max() <= 32
    # the same iteration redraws the same masks (resume); another iteration differs
    again = _build_preprocessor(iteration=7)(_sample_batch(), training=True)
    torch.testing.assert_close(torch.stack([s.mask for s in again['data_samples']]), masks)
    np.testing.assert_array_equal(
        masks.permute(1, 0, 2, 3).reshape(6, 8, 8).numpy(),
        generate_masks(6, (8, 8), 'ibot', np.random.default_rng([0, 7, 0])))
    other = _build_preprocessor(iteration=8)(_sample_batch(), training=True)
    assert not torch.equal(torch.stack([s.mask for s in other['data_samples']]), masks)


def test_preprocessor_stratified_over_all_global_crops():
    # 4 images x 2 global views = 8 crops, p = 0.5 -> exactly 4 masked crops in total
    for it in range(5):
        batch = _sample_batch(num_images=4, num_local=1)
        out = _build_preprocessor(iteration=it, mask_mode='stratified',
                                  mask_cfg=dict(mask_probability=0.5, ratio_range=(0.1, 0.5)))(
                                      batch, training=True)
        masks = torch.stack([s.mask for s in out['data_samples']])
        assert masks.shape == (4, 2, 8, 8)
        assert (masks.flatten(2).sum(-1) > 0).sum() == 4


def test_preprocessor_eval_start_epoch_and_no_samples():
    batch = _sample_batch()
    out = _build_preprocessor()(batch, training=False)
    assert all('mask' not in s for s in out['data_samples'])
    # before mask_start_epoch the masks exist but are all False
    out = _build_preprocessor(epoch=1, mask_start_epoch=2, mask_cfg=dict(pred_ratio=0.3))(
        _sample_batch(), training=True)
    assert not torch.stack([s.mask for s in out['data_samples']]).any()
    out = _build_preprocessor(epoch=2, mask_start_epoch=2, mask_cfg=dict(pred_ratio=0.3))(
        _sample_batch(), training=True)
    assert torch.stack([s.mask for s in out['data_samples']]).flatten(1).any(1).all()
    # plain inference: no data samples, nothing to attach
    batch = _sample_batch()
    batch['data_samples'] = None
    out = _build_preprocessor()(batch, training=True)
    assert out['data_samples'] is None and len(out['inputs']) == 5


def test_preprocessor_bad_config():
    with pytest.raises(ValueError, match='mask_mode'):
        _build_preprocessor(mask_mode='beit')
    with pytest.raises(TypeError, match='pred_ratio'):
        _build_preprocessor(mask_mode='stratified', mask_cfg=dict(pred_ratio=0.3))
    with pytest.raises(ValueError, match='num_global_views'):
        _build_preprocessor(num_global_views=6)(_sample_batch(), training=True)
