"""SimDINOLoss and the SimDINOv2 patch loss against independent float64 numpy references.

The reference re-derives the official MCRLoss semantics (docs/simdino.md#alignment-term,
docs/simdino.md#coding-rate-term, docs/simdino.md#distributed-coding-rate):
comp averages cos(t_g, s_v) over the batch then over the 2V−2 pairs v ≠ g; the rate is
½ logdet(I + d/(n·eps) Z_gᵀZ_g) per global view with Z_g = (s_g + t_g)/2 ('mean') or s_g
('student'), n the GLOBAL batch; γ = (d + n)/(d·n). Gradients by central differences.
"""
import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from testing_utils import start_ranks

from mmselfsup_vmf.models.losses import (
    SimDINOLoss,
    masked_patch_cosine_loss,
    masked_patch_cosine_loss_gathered,
    patch_mask_weights,
)


# ---------------------------------------------------------------- numpy reference
def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_simdino(student_raw, teacher_raw, eps=0.05, coeff=1.0, expa_type='mean',
               gamma=None, n_global=None, rate_batch=None):
    """Official CLS loss on raw head outputs (normalised here, as the head does);
    ``rate_batch`` replaces the batch n in alpha and gamma."""
    s, t = np_unit(student_raw), np_unit(teacher_raw)
    num_views, m, d = s.shape
    pair_means = [np.mean(np.sum(s[v] * t[g], axis=-1)) for g in range(2)
                  for v in range(num_views) if v != g]
    comp = sum(pair_means) / (2 * num_views - 2)
    # the two global-crop pairs (t_0, s_1) and (t_1, s_0), averaged
    global_comp = (np.mean(np.sum(s[1] * t[0], -1)) + np.mean(np.sum(s[0] * t[1], -1))) / 2
    n = m if n_global is None else n_global
    n = n if rate_batch is None else rate_batch
    rates = []
    for g in range(2):
        z = (s[g] + t[g]) / 2 if expa_type == 'mean' else s[g]
        rates.append(0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps) * z.T @ z)[1])
    gam = (d + n) / (d * n) if gamma is None else gamma
    expa = gam * np.mean(rates)
    return dict(loss_comp=-coeff * comp, loss_expa=-expa, comp=comp, expa=expa,
                global_comp=global_comp)


def np_total(student_raw, teacher_raw, **kw):
    out = np_simdino(student_raw, teacher_raw, **kw)
    return out['loss_comp'] + out['loss_expa']


def np_grad(student_raw, teacher_raw, h=1e-6, **kw):
    grad = np.zeros_like(student_raw)
    for idx in np.ndindex(*student_raw.shape):
        plus, minus = student_raw.copy(), student_raw.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (np_total(plus, teacher_raw, **kw)
                     - np_total(minus, teacher_raw, **kw)) / (2 * h)
    return grad


def raw_outputs(num_views, m, d, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_views, m, d)), rng.standard_normal((2, m, d))


def run_loss(loss_module, student_raw, teacher_raw):
    """Normalise like the head, run the loss; returns outputs and d total / d raw student."""
    s_raw = torch.tensor(student_raw, requires_grad=True)
    t_raw = torch.tensor(teacher_raw, requires_grad=True)
    student = list(F.normalize(s_raw, dim=-1).unbind(0))
    teacher = list(F.normalize(t_raw, dim=-1).unbind(0))
    out = loss_module(student, teacher)
    total = sum(v for k, v in out.items() if 'loss' in k)
    total.backward()
    return out, s_raw.grad.numpy(), t_raw.grad


def test_global_comp_and_rate_batch_against_the_reference():
    # rate_batch = 40 on a batch of 5: alpha = d/(40 eps), gamma = 1/40 + 1/d; global_comp
    # is logged only (the gradient is that of loss_comp + loss_expa)
    student_raw, teacher_raw = raw_outputs(4, 5, 6, seed=3)
    kw = dict(eps=0.05, rate_batch=40)
    out, grad, _ = run_loss(SimDINOLoss(**kw), student_raw, teacher_raw)
    ref = np_simdino(student_raw, teacher_raw, **kw)
    for key in ref:
        assert out[key].item() == pytest.approx(ref[key], rel=1e-11, abs=1e-13), key
    assert not out['global_comp'].requires_grad
    # gamma = (6 + 40)/(6 * 40), not the batch's (6 + 5)/(6 * 5)
    rates = np_simdino(student_raw, teacher_raw, gamma=1.0, **kw)['expa']
    assert out['expa'].item() == pytest.approx(rates * 46 / 240, rel=1e-11)
    np.testing.assert_allclose(grad, np_grad(student_raw, teacher_raw, **kw), rtol=1e-6,
                               atol=1e-8)
    # the default is the batch (the official global n): unchanged behaviour
    out_default, _, _ = run_loss(SimDINOLoss(), student_raw, teacher_raw)
    assert out_default['loss_expa'].item() == pytest.approx(
        np_simdino(student_raw, teacher_raw)['loss_expa'], rel=1e-11)


def test_one_global_view_logs_no_global_comp():
    views = [F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1) for _ in range(3)]
    out = SimDINOLoss(num_global=1)(views, views[:1])
    assert 'global_comp' not in out and 'comp' in out


@pytest.mark.parametrize('bad', [0, -3, 2.5, True, '64'])
def test_rate_batch_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r'model\.loss\.rate_batch .*positive int'):
        SimDINOLoss(rate_batch=bad)


# ---------------------------------------------------------------- CLS loss
@pytest.mark.parametrize('m,d', [(5, 6), (7, 4)])  # Gram (m < d) and covariance forms
@pytest.mark.parametrize('expa_type', ['mean', 'student'])
@pytest.mark.parametrize('gamma,coeff', [(None, 1.0), (0.3, 0.5)])
def test_values_and_gradients_two_global_two_local(m, d, expa_type, gamma, coeff):
    student_raw, teacher_raw = raw_outputs(4, m, d, seed=m * d)
    kw = dict(eps=0.05, coeff=coeff, expa_type=expa_type, gamma=gamma)
    out, grad, teacher_grad = run_loss(SimDINOLoss(**kw), student_raw, teacher_raw)
    ref = np_simdino(student_raw, teacher_raw, **kw)
    assert set(out) == {'loss_comp', 'loss_expa', 'comp', 'expa', 'global_comp'}
    for key in ref:
        assert out[key].dtype == torch.float64
        assert out[key].item() == pytest.approx(ref[key], rel=1e-11, abs=1e-13), key
    assert not out['comp'].requires_grad and not out['expa'].requires_grad
    assert out['comp'].item() == pytest.approx(-out['loss_comp'].item() / coeff)
    np.testing.assert_allclose(grad, np_grad(student_raw, teacher_raw, **kw), rtol=1e-6,
                               atol=1e-8)
    assert teacher_grad is None  # stop-gradient on the teacher


def test_default_config_matches_official_defaults():
    loss = MODELS.build(dict(type='SimDINOLoss'))
    assert (loss.eps, loss.coeff, loss.expa_type, loss.gamma, loss.reduce_cov,
            loss.num_global, loss.rate_batch) == (0.05, 1.0, 'mean', None, False, 2, None)
    assert SimDINOLoss(expa_type=1).expa_type == 'mean'  # the official integer flag
    assert SimDINOLoss(expa_type=0).expa_type == 'student'


def test_twelve_views_at_full_size():
    # V = 2 + 10 views, m = 64, d = 256 (the published per-GPU setting, one rank)
    student_raw, teacher_raw = raw_outputs(12, 64, 256, seed=0)
    out, _, _ = run_loss(SimDINOLoss(), student_raw, teacher_raw)
    ref = np_simdino(student_raw, teacher_raw)
    for key in ref:
        assert out[key].item() == pytest.approx(ref[key], rel=1e-10, abs=1e-13), key


def test_bf16_autocast_keeps_float32_loss():
    student_raw, teacher_raw = raw_outputs(4, 16, 32, seed=1)
    ref = np_simdino(student_raw, teacher_raw)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = SimDINOLoss()(list(F.normalize(torch.tensor(student_raw).float(), dim=-1)),
                            list(F.normalize(torch.tensor(teacher_raw).float(), dim=-1)))
    for key in ref:
        assert out[key].dtype == torch.float32
        assert out[key].item() == pytest.approx(ref[key], rel=1e-5), key


def test_input_validation():
    loss = SimDINOLoss()
    views = [F.normalize(torch.randn(4, 8), dim=-1) for _ in range(4)]
    with pytest.raises(ValueError, match='at least 2 images per GPU'):
        loss([v[:1] for v in views], [v[:1] for v in views[:2]])
    with pytest.raises(ValueError, match='expected 2 teacher'):
        loss(views, views[:1])
    with pytest.raises(ValueError, match=r'student view 2 has shape \(4, 6\).*\(4, 8\)'):
        loss(views[:2] + [torch.randn(4, 6)] + views[3:], views[:2])
    with pytest.raises(ValueError, match=r'teacher view 0 has shape \(3, 8\)'):
        loss(views, [v[:3] for v in views[:2]])
    with pytest.raises(ValueError, match='at least 2 student views'):
        loss(views[:1], views[:2])
    with pytest.raises(ValueError, match='expa_type'):
        SimDINOLoss(expa_type='teacher')
    with pytest.raises(ValueError, match='eps'):
        SimDINOLoss(eps=-0.05)


# ---------------------------------------------------------------- SimDINOv2 patch loss
TEST_D_MASKS = [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]]
TEST_D_STUDENT = [[1, 0, 2, 1], [0, 1, 1, -1], [2, 2, 0, 1], [1, -1, 1, 0], [0, 0, 1, 2]]
TEST_D_TEACHER = [[1, 1, 2, 0], [1, 1, 0, -1], [2, 1, 1, 1], [0, -1, 1, 1], [1, 0, 1, 2]]


def test_patch_loss_test_d():
    s = np.array(TEST_D_STUDENT, dtype=np.float64)
    t = np.array(TEST_D_TEACHER, dtype=np.float64)
    cos = np.sum(np_unit(s) * np_unit(t), axis=-1)
    np.testing.assert_allclose(cos, [0.833333, 0.666667, 0.881917, 0.666667, 0.912871],
                               atol=1e-6)
    weights = np.array([1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3])
    ref = -np.sum(weights * cos) / 3
    assert ref == pytest.approx(-0.523494966614, abs=1e-12)

    masks = torch.tensor(TEST_D_MASKS, dtype=torch.bool)
    np.testing.assert_allclose(patch_mask_weights(masks).numpy(), weights, rtol=1e-7)
    s_t = torch.tensor(s, requires_grad=True)
    loss = masked_patch_cosine_loss_gathered(s_t, torch.tensor(t), torch.tensor(weights), 3)
    assert loss.item() == pytest.approx(-0.523494966614, abs=1e-12)
    # d cos(s, t)/ds = t̂/|s| − cos·s/|s|²  (hand-derived)
    loss.backward()
    norm_s = np.linalg.norm(s, axis=-1, keepdims=True)
    dcos = np_unit(t) / norm_s - cos[:, None] * s / norm_s**2
    np.testing.assert_allclose(s_t.grad.numpy(), -weights[:, None] * dcos / 3, rtol=1e-10,
                               atol=1e-15)

    # dense form: tokens at masked positions (row-major), noise elsewhere (must not matter)
    rng = np.random.default_rng(0)
    dense_s, dense_t = rng.standard_normal((2, 3, 4, 4))
    dense_s[masks.numpy()], dense_t[masks.numpy()] = s, t
    dense = masked_patch_cosine_loss(torch.tensor(dense_s), torch.tensor(dense_t), masks)
    assert dense.item() == pytest.approx(-0.523494966614, abs=1e-12)


def test_patch_loss_validation():
    with pytest.raises(ValueError, match='masks must be bool of shape'):
        masked_patch_cosine_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4),
                                 torch.ones(2, 3))
    with pytest.raises(ValueError, match=r'\(2, 3, 4\).*\(2, 3, 5\)'):
        masked_patch_cosine_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5),
                                 torch.ones(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------- 2 ranks (gloo)
def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _two_rank_worker(rank, world, port, out_dir, student_raw, teacher_raw):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    try:
        import mmselfsup_vmf  # noqa: F401
        from mmselfsup_vmf.models.losses import SimDINOLoss as Loss
        m = student_raw.shape[1] // world
        rows = slice(rank * m, (rank + 1) * m)
        out = {}
        for reduce_cov in (False, True):
            s = F.normalize(student_raw[:, rows], dim=-1)
            t = F.normalize(teacher_raw[:, rows], dim=-1)
            res = Loss(reduce_cov=reduce_cov)(list(s), list(t))
            out[reduce_cov] = {k: v.item() for k, v in res.items()}
        torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_ranks_official_semantics_and_reduce_cov():
    world = 2
    student_raw, teacher_raw = raw_outputs(4, 8, 6, seed=11)
    with tempfile.TemporaryDirectory() as out_dir:
        start_ranks(_two_rank_worker, nprocs=world, join=True,
                 args=(world, _free_port(), out_dir, torch.tensor(student_raw),
                       torch.tensor(teacher_raw)))
        outs = [torch.load(os.path.join(out_dir, f'rank{r}.pt'), weights_only=False)
                for r in range(world)]
    global_ref = np_simdino(student_raw, teacher_raw)
    for rank, out in enumerate(outs):
        rows = slice(rank * 4, rank * 4 + 4)
        # official default: local rows, but α and γ with the global n = 4 × 2
        local_ref = np_simdino(student_raw[:, rows], teacher_raw[:, rows], n_global=8)
        for key in local_ref:
            assert out[False][key] == pytest.approx(local_ref[key], rel=1e-11), key
        # reduce_cov: the rate term is the global-batch one; alignment stays per rank
        assert out[True]['expa'] == pytest.approx(global_ref['expa'], rel=1e-11)
        assert out[True]['comp'] == pytest.approx(local_ref['comp'], rel=1e-11)
    # DDP averages the per-rank alignment into the global-batch alignment
    assert np.mean([o[True]['comp'] for o in outs]) == pytest.approx(global_ref['comp'])
