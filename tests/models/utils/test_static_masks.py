"""Masked tokens gathered into a fixed number of rows (SimDINOv2's patch term).

The bound holds for every draw of the mask laws and is DINOv2's ``upperbound`` up to one
patch per masked crop; the padded, weighted sum equals the sum over ``tokens[masks]`` (the
official gather) in float64 to rounding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmselfsup_vmf.models.losses import masked_patch_cosine_loss
from mmselfsup_vmf.models.losses.simdino_loss import masked_patch_cosine_loss_gathered
from mmselfsup_vmf.models.utils.masking import generate_masks
from mmselfsup_vmf.models.utils.static_masks import max_masked_patches, padded_mask_index

LAWS = [
    ('stratified', dict(mask_probability=0.5, ratio_range=(0.1, 0.5))),
    ('stratified', dict(mask_probability=1.0, ratio_range=(0.0, 1.0))),
    ('ibot', dict(pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2))),
    ('ibot', dict(pred_ratio=0.3, pred_ratio_var=0.2, pred_shape='rand')),
]


@pytest.mark.parametrize('mode,cfg', LAWS)
def test_the_bound_holds_for_every_draw(mode, cfg):
    crops, grid = 16, (14, 14)
    bound = max_masked_patches(crops, 196, mode, cfg)
    rng = np.random.default_rng(0)
    draws = [generate_masks(crops, grid, mode, rng, **cfg) for _ in range(200)]
    assert max(int(m.sum()) for m in draws) <= bound <= crops * 196
    if mode == 'stratified':  # a bound, not a count of every patch
        assert max(int(m.sum()) for m in draws) > 0.8 * bound
    else:  # crops are drawn independently: each may reach its maximum
        assert max(int(m.sum((1, 2)).max()) for m in draws) > 0.8 * bound / crops


def test_stratified_bound_is_dinov2s_upperbound_plus_one_per_masked_crop():
    # DINOv2 collate_data_and_cast: upperbound = sum_i int(N * probs[i + 1]) over the
    # n = int(B * p) masked crops, probs = linspace(0.1, 0.5, n + 1)
    n_crops, n_patches = 128, 196
    n = int(n_crops * 0.5)
    probs = np.linspace(0.1, 0.5, n + 1)
    upperbound = sum(int(n_patches * probs[i + 1]) for i in range(n))
    cfg = dict(mask_probability=0.5, ratio_range=(0.1, 0.5))
    assert max_masked_patches(n_crops, n_patches, 'stratified', cfg) == upperbound + n


def test_padded_gather_equals_the_boolean_index_in_float64():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 20, generator=gen) < 0.3
    masks[2] = False  # an unmasked crop still counts in B_g
    student = F.normalize(torch.randn(6, 20, 8, generator=gen, dtype=torch.float64), dim=-1)
    teacher = F.normalize(torch.randn(6, 20, 8, generator=gen, dtype=torch.float64), dim=-1)
    count = int(masks.sum())
    for rows in (count, count + 7, 6 * 20):
        index, weights, n = padded_mask_index(masks, rows, torch.float64)
        assert index.shape == weights.shape == (rows, ) and int(n) == count
        # the real rows are exactly the boolean index's, in its order
        assert torch.equal(index[:count], torch.nonzero(masks.flatten()).flatten())
        assert torch.all(weights[count:] == 0)
        padded = masked_patch_cosine_loss_gathered(
            student.flatten(0, 1)[index], teacher.flatten(0, 1)[index], weights, 6)
        # reference: -(1/B) sum_i (1/|M_i|) sum_{p in M_i} cos, written out in float64
        cos = (student * teacher).sum(-1)
        per_image = (cos * masks).sum(-1) / masks.sum(-1).clamp(min=1)
        assert padded.item() == pytest.approx(-per_image.sum().item() / 6, rel=1e-13)
        assert padded.item() == pytest.approx(
            masked_patch_cosine_loss(student, teacher, masks).item(), rel=1e-13)


def test_bad_masks_are_named():
    with pytest.raises(ValueError, match=r'\(B, N\) bool'):
        padded_mask_index(torch.zeros(2, 3, 4, dtype=torch.bool), 5)
