"""coding_rate against an independent float64 numpy reference (docs/simdino.md#coding-rate-term,
docs/simdino.md#numerics-of-the-coding-rate,
docs/simdino.md#reference-values-for-the-simdino-tests).

Reference: R = ½ logdet(I_d + d/(n·eps) ZᵀZ) by ``np.linalg.slogdet`` on the d×d matrix,
gradient ∇_Z R = α Z (I_d + α ZᵀZ)⁻¹ (hand-derived, itself checked by finite differences).
"""
import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
from testing_utils import start_ranks

from mmselfsup_vmf.models.losses import coding_rate


# ---------------------------------------------------------------- numpy reference
def np_rate(z, eps, n=None):
    z = np.asarray(z, dtype=np.float64)
    n_rows, d = z.shape
    alpha = d / ((n_rows if n is None else n) * eps)
    sign, logdet = np.linalg.slogdet(np.eye(d) + alpha * z.T @ z)
    assert sign > 0
    return 0.5 * logdet


def np_rate_grad(z, eps, n=None):
    z = np.asarray(z, dtype=np.float64)
    n_rows, d = z.shape
    alpha = d / ((n_rows if n is None else n) * eps)
    return alpha * z @ np.linalg.inv(np.eye(d) + alpha * z.T @ z)


def np_row_normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def arange_rows(n, d):
    return np_row_normalise(np.arange(n * d, dtype=np.float64).reshape(n, d))


def random_rows(n, d, seed):
    return np_row_normalise(np.random.default_rng(seed).standard_normal((n, d)))


# ---------------------------------------------------------------- values and gradients
def test_reference_gradient_formula_matches_finite_differences():
    z, eps, n = random_rows(5, 3, seed=1), 0.05, 7
    fd = np.zeros_like(z)
    h = 1e-6
    for idx in np.ndindex(*z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (np_rate(zp, eps, n) - np_rate(zm, eps, n)) / (2 * h)
    np.testing.assert_allclose(np_rate_grad(z, eps, n), fd, rtol=1e-6, atol=1e-8)


def test_single_sample_hand_value_fixes_eps_convention():
    # one unit row, n=1, d=4: R = ½ ln(1 + d/eps) = ½ ln 81 = ln 9 for eps = ε² = 0.05.
    z = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    assert coding_rate(z, 0.05).item() == pytest.approx(np.log(9.0), rel=1e-13)
    # reading eps as ε (α = d/ε²) would give ½ ln(1 + 4/0.0025) instead
    assert abs(coding_rate(z, 0.05).item() - 0.5 * np.log(1 + 4 / 0.05**2)) > 1.0


@pytest.mark.parametrize('n,d', [(4, 8), (8, 3), (5, 5), (1, 6), (8, 8)])
def test_arange_rows_value_and_gradient(n, d):
    z_np = arange_rows(n, d)
    z = torch.tensor(z_np, requires_grad=True)
    rate = coding_rate(z, 0.05)
    assert rate.dtype == torch.float64 and rate.shape == ()
    assert rate.item() == pytest.approx(np_rate(z_np, 0.05), rel=1e-12)
    rate.backward()
    np.testing.assert_allclose(z.grad.numpy(), np_rate_grad(z_np, 0.05), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize('n,d,eps', [(3, 8, 0.05), (8, 5, 0.5), (6, 6, 0.01)])
def test_random_rows_float32_and_explicit_n(n, d, eps):
    z_np = random_rows(n, d, seed=n * d)
    # explicit n (the official global batch): α = d/(n·eps) with that n, not the row count
    for n_alpha in (None, 3 * n):
        z = torch.tensor(z_np, dtype=torch.float32, requires_grad=True)
        rate = coding_rate(z, eps, n=n_alpha)
        assert rate.dtype == torch.float32
        assert rate.item() == pytest.approx(np_rate(z_np, eps, n_alpha), rel=2e-6)
        rate.backward()
        np.testing.assert_allclose(z.grad.numpy(), np_rate_grad(z_np, eps, n_alpha),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('n,d', [(3, 8), (8, 3)])
def test_sylvester_gram_form_equals_covariance_form(n, d):
    # reduce_cov=True forces the d×d form (not distributed: the sum is over one rank);
    # reduce_cov=False uses the n×n Gram form when n < d.
    z_np = random_rows(n, d, seed=7)
    za = torch.tensor(z_np, requires_grad=True)
    zb = torch.tensor(z_np, requires_grad=True)
    ra = coding_rate(za, 0.05, reduce_cov=False)
    rb = coding_rate(zb, 0.05, reduce_cov=True)
    ra.backward()
    rb.backward()
    # and the two sides of the identity in numpy: logdet(I_d + αZᵀZ) = logdet(I_n + αZZᵀ)
    alpha = d / (n * 0.05)
    gram_side = 0.5 * np.linalg.slogdet(np.eye(n) + alpha * z_np @ z_np.T)[1]
    assert gram_side == pytest.approx(np_rate(z_np, 0.05), rel=1e-12)
    assert ra.item() == pytest.approx(np_rate(z_np, 0.05), rel=1e-12)
    assert rb.item() == pytest.approx(np_rate(z_np, 0.05), rel=1e-12)
    np.testing.assert_allclose(za.grad.numpy(), np_rate_grad(z_np, 0.05), rtol=1e-10)
    np.testing.assert_allclose(zb.grad.numpy(), np_rate_grad(z_np, 0.05), rtol=1e-10)


@pytest.mark.parametrize('n,d', [(4, 7), (7, 4)])
def test_batched_views(n, d):
    views = np.stack([random_rows(n, d, seed=s) for s in range(3)])
    z = torch.tensor(views, requires_grad=True)
    rates = coding_rate(z, 0.05, n=2 * n)
    assert rates.shape == (3, )
    np.testing.assert_allclose(rates.detach().numpy(),
                               [np_rate(v, 0.05, 2 * n) for v in views], rtol=1e-12)
    rates.sum().backward()
    np.testing.assert_allclose(z.grad.numpy(),
                               np.stack([np_rate_grad(v, 0.05, 2 * n) for v in views]),
                               rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- precision (Test E)
def near_collapsed_batch():
    """Test E: a random unit vector plus 1e-3 noise, renormalised, seed 0 (fp64)."""
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(256, dtype=torch.float64), dim=0)
    return torch.nn.functional.normalize(
        u + 1e-3 * torch.randn(512, 256, dtype=torch.float64), dim=-1)


def test_near_collapsed_batch_under_autocast():
    z64 = near_collapsed_batch()
    ref = np_rate(z64.numpy(), 0.05)
    # docs/simdino.md#reference-values-for-the-simdino-tests
    assert ref == pytest.approx(4.9214899, abs=1e-6)
    # Control: a half-precision covariance is far off (so the tolerances below are tight).
    half_cov = (z64.half().T @ z64.half()).double().numpy()
    half_rate = 0.5 * np.linalg.slogdet(np.eye(256) + 10.0 * half_cov)[1]
    assert abs(half_rate / ref - 1) > 2e-2

    for dtype in (torch.bfloat16, torch.float16):
        # fp32 features produced inside autocast
        with torch.autocast('cpu', dtype=dtype):
            rate = coding_rate(z64.float(), 0.05)
        assert rate.dtype == torch.float32 and torch.isfinite(rate)
        assert abs(rate.item() / ref - 1) < 1e-4, dtype
        # features already in low precision, inside autocast
        z_low = z64.to(dtype).requires_grad_(True)
        with torch.autocast('cpu', dtype=dtype):
            rate = coding_rate(z_low, 0.05)
        rate.backward()
        assert rate.dtype == torch.float32 and torch.isfinite(rate)
        assert torch.isfinite(z_low.grad.float()).all()
        # fp32 Cholesky adds ~1e-5 (4.9215660 on one thread) to what rounding the features did
        ref_rounded = np_rate(z_low.detach().double().numpy(), 0.05)
        assert abs(rate.item() / ref_rounded - 1) < 1e-4, dtype
        if dtype == torch.float16:
            assert abs(rate.item() / ref - 1) < 1e-3
        else:
            # bf16 rounding of near-collapsed features alone moves R by ~+0.14 %
            assert abs(rate.item() / ref - 1) < 3e-3
        # n < d: the n×n Gram (Sylvester) form, same accuracy
        with torch.autocast('cpu', dtype=dtype):
            rate = coding_rate(z64[:64].float(), 0.05)
        assert abs(rate.item() / np_rate(z64[:64].numpy(), 0.05) - 1) < 1e-4, dtype


# ---------------------------------------------------------------- errors
def test_errors():
    z = torch.tensor(arange_rows(4, 6))
    with pytest.raises(ValueError, match='eps'):
        coding_rate(z, -0.05)
    with pytest.raises(ValueError, match='eps'):
        coding_rate(z, 0.0)
    with pytest.raises(ValueError, match=r'\(2, 3, 4, 5\)'):
        coding_rate(torch.zeros(2, 3, 4, 5), 0.05)
    with pytest.raises(ValueError, match=r'\(6,\)'):
        coding_rate(torch.zeros(6), 0.05)
    with pytest.raises(ValueError, match='n must be a positive integer'):
        coding_rate(z, 0.05, n=0)
    bad = z.clone()
    bad[1, 2] = float('nan')
    with pytest.raises(FloatingPointError, match='NaN'):
        coding_rate(bad, 0.05)
    # eps so small that I + αZᵀZ (d×d, rank 4 < d) is numerically singular in float32
    with pytest.raises(FloatingPointError, match=r'Cholesky.*6x6.*eps=1e-30'):
        coding_rate(z.float(), 1e-30, reduce_cov=True)
    # α overflowing float32
    with pytest.raises(FloatingPointError, match='Cholesky'):
        coding_rate(z.float(), 1e-40)


# ---------------------------------------------------------------- 2 ranks (gloo)
def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _two_rank_worker(rank, world, port, out_dir, z_global, x_global, weight, eps):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    try:
        import mmselfsup_vmf  # noqa: F401
        from mmselfsup_vmf.models.losses import coding_rate as rate_fn
        from mmselfsup_vmf.models.utils import all_reduce_mean
        n = z_global.shape[0]
        rows = slice(rank * n // world, (rank + 1) * n // world)
        out = {}
        for reduce_cov in (True, False):
            z = z_global[rows].clone().requires_grad_(True)
            rate = rate_fn(z, eps, n=n, reduce_cov=reduce_cov)
            rate.backward()
            out[f'rate_{reduce_cov}'] = rate.item()
            out[f'grad_{reduce_cov}'] = z.grad.numpy()
        out['rate_default_n'] = rate_fn(z_global[rows], eps, reduce_cov=True).item()
        # batched views, reduced in one call
        out['batched'] = rate_fn(torch.stack([z_global[rows], z_global[rows].flip(-1)]), eps,
                                 reduce_cov=True).numpy()
        # a parameter shared by the ranks, its gradient averaged as DDP does
        w = weight.clone().requires_grad_(True)
        rate_fn(x_global[rows] @ w, eps, n=n, reduce_cov=True).backward()
        out['w_grad'] = all_reduce_mean(w.grad.clone()).numpy()
        torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_ranks_reduce_cov_and_official_per_rank_semantics():
    world, eps = 2, 0.05
    z_global = torch.tensor(random_rows(8, 6, seed=3))
    x_global = torch.tensor(np.random.default_rng(4).standard_normal((8, 5)))
    weight = torch.tensor(np.random.default_rng(5).standard_normal((5, 6)) / 3)
    with tempfile.TemporaryDirectory() as out_dir:
        start_ranks(_two_rank_worker, nprocs=world, join=True,
                 args=(world, _free_port(), out_dir, z_global, x_global, weight, eps))
        outs = [torch.load(os.path.join(out_dir, f'rank{r}.pt'), weights_only=False)
                for r in range(world)]
    z = z_global.numpy()
    global_grad = np_rate_grad(z, eps)
    xw = x_global.numpy() @ weight.numpy()
    for rank, out in enumerate(outs):
        rows = slice(rank * 4, rank * 4 + 4)
        # reduce_cov: every rank holds the global-batch rate; the all-reduce backward sums
        # the (identical) upstream gradients, so each rank receives world × its share of
        # the global gradient, and DDP's average of parameter gradients is exact.
        assert out['rate_True'] == pytest.approx(np_rate(z, eps), rel=1e-12)
        assert out['rate_default_n'] == pytest.approx(np_rate(z, eps), rel=1e-12)
        np.testing.assert_allclose(out['grad_True'], world * global_grad[rows], rtol=1e-10)
        np.testing.assert_allclose(
            out['batched'], [np_rate(z, eps), np_rate(z[:, ::-1], eps)], rtol=1e-12)
        np.testing.assert_allclose(out['w_grad'],
                                   x_global.numpy().T @ np_rate_grad(xw, eps), rtol=1e-10)
        # official default: local covariance, α with the global n
        assert out['rate_False'] == pytest.approx(np_rate(z[rows], eps, n=8), rel=1e-12)
        np.testing.assert_allclose(out['grad_False'], np_rate_grad(z[rows], eps, n=8),
                                   rtol=1e-10)
    assert abs(outs[0]['rate_False'] - np_rate(z, eps)) > 1e-3  # the two semantics differ
