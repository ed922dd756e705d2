"""iBOT's masked-patch loss: hand-computed averaging, its own centre, and 2 ranks == 1 rank."""
import math
import os
import socket

import numpy as np
import pytest
import torch
from testing_utils import start_ranks

from mmselfsup_vmf.models.losses import DINOLoss, iBOTPatchLoss, masked_patch_cross_entropy

LN2 = math.log(2.0)
# Hand-derived cross-entropies -sum_k q_k log p_k for K = 2:
CE_HALF_HALF = LN2                                     # q = (1/2, 1/2), p = (1/2, 1/2)
CE_34_34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # q = p = (3/4, 1/4): 0.5623351446
CE_HALF_34 = 0.5 * math.log(16.0 / 3.0)               # q = (1/2, 1/2), p = (3/4, 1/4): 0.8369882167
HALF = (0.0, 0.0)              # scores whose softmax (temperature 1) is (1/2, 1/2)
THREE_QUARTERS = (math.log(3.0), 0.0)  # softmax (3/4, 1/4)
FAR = (50.0, 0.0)              # a patch that would cost ~50 if it were (wrongly) counted
FAR_T = (0.0, 50.0)


def _view(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _hand_example():
    """2 global views, B = 2 images, N = 4 patches (2x2 grid), K = 2."""
    teacher = [
        _view([[HALF, THREE_QUARTERS, FAR_T, FAR_T], [FAR_T, FAR_T, FAR_T, FAR_T]]),
        _view([[HALF, FAR_T, FAR_T, FAR_T], [HALF, HALF, HALF, HALF]]),
    ]
    student = [
        _view([[HALF, THREE_QUARTERS, FAR, FAR], [FAR, FAR, FAR, FAR]]),
        _view([[THREE_QUARTERS, FAR, FAR, FAR], [HALF, HALF, HALF, HALF]]),
    ]
    masks = [
        torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool),
        torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 1]]], dtype=torch.bool),
    ]
    # view 1: image 0 averages its 2 masked patches, image 1 has none (-> 0);
    # view 2: image 0 has 1 masked patch, image 1 has 4 identical ones.
    view1 = [(CE_HALF_HALF + CE_34_34) / 2, 0.0]
    view2 = [CE_HALF_34, CE_HALF_HALF]
    expected = (np.mean(view1) + np.mean(view2)) / 2  # = 0.5394691400
    return teacher, student, masks, (view1, view2), expected


def test_masked_patch_cross_entropy_per_image_hand_values():
    teacher, student, masks, per_image, _ = _hand_example()
    for t, s, m, want in zip(teacher, student, masks, per_image):
        got = masked_patch_cross_entropy(torch.softmax(t, -1), torch.log_softmax(s, -1), m)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_patch_loss_averages_masked_patches_then_batch_then_views():
    teacher, student, masks, _, expected = _hand_example()
    assert expected == pytest.approx(0.53946914, abs=1e-8)
    loss_fn = iBOTPatchLoss(num_prototypes=2, student_temp=1.0, centering='none')
    loss = loss_fn(student, teacher, masks, teacher_temp=1.0)['loss_patch']
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # flattened (B, N) masks give the same result
    flat = [m.flatten(1) for m in masks]
    loss = loss_fn(student, teacher, flat, 1.0)['loss_patch']
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_patch_loss_temperatures_scale_scores():
    """Teacher scores / tau_t and student scores / tau_s: doubling both temperatures and the
    scores gives the hand-computed value again."""
    teacher, student, masks, _, expected = _hand_example()
    loss_fn = iBOTPatchLoss(num_prototypes=2, student_temp=0.5, centering='none')
    loss = loss_fn([s * 0.5 for s in student], [t * 0.07 for t in teacher], masks,
                   0.07)['loss_patch']
    assert float(loss) == pytest.approx(expected, rel=1e-9)


def test_patch_logit_centre_is_mean_over_patches_then_images():
    # K = 2, B = 2, N = 2 patches, two views. Per-image patch means of the teacher scores:
    # view 1: image 0 ((1,2)+(3,4))/2 = (2,3); image 1 ((0,0)+(2,-2))/2 = (1,-1)
    # view 2: image 0 (4,0); image 1 (-1,5)
    # mean over the 4 images = (6/4, 7/4) = (1.5, 1.75); centre = 0.1 * that.
    teacher = [torch.tensor([[[1., 2.], [3., 4.]], [[0., 0.], [2., -2.]]]),
               torch.tensor([[[4., 0.], [4., 0.]], [[-1., 5.], [-1., 5.]]])]
    student = [torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)]
    masks = [torch.ones(2, 2, dtype=torch.bool)] * 2
    loss_fn = iBOTPatchLoss(num_prototypes=2, centering='logit', center_momentum=0.9)
    loss_fn(student, teacher, masks, 0.04)
    np.testing.assert_allclose(loss_fn.center.center.numpy(), [0.15, 0.175], rtol=1e-6)
    # the centre is used in the next call: teacher scores equal to it give uniform q, so a
    # uniform student costs exactly ln 2 per masked patch
    q_teacher = [loss_fn.center.center.expand(2, 2, 2).clone()] * 2
    loss = loss_fn(student, q_teacher, masks, 0.04)['loss_patch']
    assert float(loss) == pytest.approx(LN2, rel=1e-6)


def test_patch_probability_centre_hand_values():
    # teacher patches (temperature 1): view 1 all (1/2, 1/2); view 2 all (3/4, 1/4)
    # -> mean softmax (5/8, 3/8); Pbar = 0.9 * (1/2, 1/2) + 0.1 * (5/8, 3/8) = (0.5125, 0.4875)
    teacher = [torch.zeros(3, 4, 2), torch.tensor(THREE_QUARTERS).expand(3, 4, 2).clone()]
    student = [torch.zeros(3, 4, 2)] * 2
    masks = [torch.ones(3, 4, dtype=torch.bool)] * 2
    loss_fn = iBOTPatchLoss(num_prototypes=2, centering='probability', student_temp=1.0)
    loss = loss_fn(student, teacher, masks, 1.0)['loss_patch']
    assert float(loss) == pytest.approx(LN2, rel=1e-6)  # uniform student: ln 2 whatever q is
    np.testing.assert_allclose(loss_fn.center.center.numpy(), [0.5125, 0.4875], rtol=1e-6)


def test_patch_loss_vmf_uses_patch_norms():
    """With vmf the patch logits get log C_p(||w_k|| / tau) - log C_p(1 / tau); at p = 3,
    log C_3(k) = log k - log 2pi - k - log(1 - exp(-2k)) (docs/methods.md#vmf-log-normaliser)."""
    def log_c3(k):
        return math.log(k) - math.log(2 * math.pi) - k - math.log1p(-math.exp(-2 * k))

    tau_s = 0.5
    norms = torch.tensor([1.0, 3.0], dtype=torch.float64)
    student = [torch.zeros(1, 1, 2, dtype=torch.float64)]
    teacher = [torch.zeros(1, 1, 2, dtype=torch.float64)]
    mask = [torch.ones(1, 1, dtype=torch.bool)]
    loss_fn = iBOTPatchLoss(num_prototypes=2, student_temp=tau_s, centering='none', vmf=True,
                            dim=3)
    loss = loss_fn(student, teacher, mask, 1.0, student_norms=norms,
                   teacher_norms=norms)['loss_patch']
    shift_s = np.array([log_c3(1 / tau_s), log_c3(3 / tau_s)])
    shift_t = np.array([log_c3(1.0), log_c3(3.0)])
    q = np.exp(shift_t - shift_t.max())
    q /= q.sum()
    log_p = shift_s - np.log(np.exp(shift_s).sum())
    assert float(loss) == pytest.approx(float(-(q * log_p).sum()), rel=1e-10)
    with pytest.raises(ValueError, match='student_norms and teacher_norms'):
        loss_fn(student, teacher, mask, 1.0)


def test_patch_loss_rejects_bad_shapes():
    loss_fn = iBOTPatchLoss(num_prototypes=2)
    good = [torch.zeros(2, 4, 2)]
    with pytest.raises(ValueError, match='one student view, teacher view and mask'):
        loss_fn(good, good + good, [torch.ones(2, 4)], 0.04)
    with pytest.raises(ValueError, match=r'patch scores \(B, N, 2\)'):
        loss_fn([torch.zeros(2, 4, 3)], good, [torch.ones(2, 4)], 0.04)
    with pytest.raises(ValueError, match='shapes do not match'):
        loss_fn(good, good, [torch.ones(2, 5)], 0.04)


# --------------------------------------------------------------------- 2 ranks == 1 rank
K_CLS, K_PATCH, BATCH, PATCHES, STEPS = 7, 5, 6, 4, 3


def _batches():
    """STEPS batches of (student CLS views, teacher CLS views, student/teacher patches, masks)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        s_cls = [torch.randn(BATCH, K_CLS, generator=gen) for _ in range(3)]
        t_cls = [torch.randn(BATCH, K_CLS, generator=gen) for _ in range(2)]
        s_patch = [torch.randn(BATCH, PATCHES, K_PATCH, generator=gen) for _ in range(2)]
        t_patch = [torch.randn(BATCH, PATCHES, K_PATCH, generator=gen) for _ in range(2)]
        masks = [torch.rand(BATCH, PATCHES, generator=gen) < 0.5 for _ in range(2)]
        out.append((s_cls, t_cls, s_patch, t_patch, masks))
    return out


def _run_losses(rows):
    """Run the CLS (vMF, probability) and patch (probability / logit) losses on the rows
    ``rows`` of every batch; returns the per-step losses and the final centres."""
    gen = torch.Generator().manual_seed(1)
    cls_norms = torch.rand(K_CLS, generator=gen) + 0.5
    patch_norms = torch.rand(K_PATCH, generator=gen) + 0.5
    cls_loss = DINOLoss(K_CLS, centering='probability', vmf=True, dim=16)
    patch_prob = iBOTPatchLoss(K_PATCH, centering='probability', vmf=True, dim=16)
    patch_logit = iBOTPatchLoss(K_PATCH, centering='logit')
    losses = []
    for s_cls, t_cls, s_patch, t_patch, masks in _batches():
        def pick(views):
            return [v[rows] for v in views]

        losses.append([
            float(cls_loss(pick(s_cls), pick(t_cls), 0.05, cls_norms, cls_norms)['loss_dino']),
            float(patch_prob(pick(s_patch), pick(t_patch), pick(masks), 0.06, patch_norms,
                             patch_norms)['loss_patch']),
            float(patch_logit(pick(s_patch), pick(t_patch), pick(masks), 0.06)['loss_patch']),
        ])
    return dict(losses=torch.tensor(losses, dtype=torch.float64),
                cls=cls_loss.center.center.clone(), patch_prob=patch_prob.center.center.clone(),
                patch_logit=patch_logit.center.center.clone())


def _worker(rank, world_size, port, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size)
    try:
        half = BATCH // world_size
        result = _run_losses(slice(rank * half, (rank + 1) * half))
        torch.save(result, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_centres_two_process_gloo_equal_one_process(tmp_path):
    """Each rank holds half of every batch: the all-reduced centres (CLS probability centre,
    patch probability and logit centres) equal those of one process with the whole batch, and
    the mean of the two ranks' losses equals the one-process loss (equal halves)."""
    start_ranks(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _run_losses(slice(0, BATCH))
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    for key in ('cls', 'patch_prob', 'patch_logit'):
        for r in ranks:
            torch.testing.assert_close(r[key], single[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close((ranks[0]['losses'] + ranks[1]['losses']) / 2, single['losses'],
                               rtol=1e-5, atol=1e-6)
    # the centres moved (the test would be void otherwise)
    assert not torch.allclose(single['patch_prob'], torch.full((K_PATCH,), 1 / K_PATCH))
    assert single['patch_logit'].abs().max() > 1e-3
