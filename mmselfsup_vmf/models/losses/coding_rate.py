"""Coding rate R_eps of a batch of features (the SimDINO expansion term).

    R(Z) = ½ logdet(I_d + α ZᵀZ),   α = d / (n · eps),

for Z ∈ R^{n_local×d} with samples as rows. ``eps`` follows the official SimDINO / MCR²
code: it is ε² of the paper (published runs: eps = 0.05). ZᵀZ is the *uncentred* second
moment, and n is the number of samples the covariance is meant to average over — the
global batch m·N in the official code, even when the covariance itself is local.

Numerics:
- A = I + αM is SPD with all eigenvalues ≥ 1, so ½ logdet A = Σ log diag chol(A).
- Computed in float32 at least (float64 for float64 input) with autocast disabled:
  a half-precision ZᵀZ distorts the small eigenvalues by several percent.
- Sylvester: logdet(I_d + αZᵀZ) = logdet(I_n + αZZᵀ); the smaller matrix is used unless
  the covariance is all-reduced across ranks (only the d×d form can be summed).
- No host synchronisation on an accelerator (``numerics.host_checks_are_free``): on the CPU
  non-finite features and a failed Cholesky raise at once with the details; elsewhere the
  rate is NaN for such inputs, which the divergence guard reports by term name.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from ..utils.dist import differentiable_all_reduce_sum, global_batch_size
from .numerics import autocast_off, host_checks_are_free


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f'coding_rate: eps must be a positive float, got {eps!r}')
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(
            f'coding_rate: eps must be a finite positive number (it is ε², e.g. 0.05), '
            f'got {eps!r}')
    return eps


def _check_features(z) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f'coding_rate: z must be a Tensor, got {type(z).__name__}')
    if z.dim() not in (2, 3) or z.shape[-2] < 1 or z.shape[-1] < 1:
        raise ValueError(
            'coding_rate: z must have shape (n, d) or (V, n, d) with n, d >= 1, '
            f'got shape {tuple(z.shape)}')
    if not (z.is_floating_point()):
        raise TypeError(f'coding_rate: z must be a floating tensor, got {z.dtype}')
    if host_checks_are_free(z) and not bool(torch.isfinite(z).all()):
        raise FloatingPointError(
            f'coding_rate: the features of shape {tuple(z.shape)} contain NaN or Inf '
            '(diverged training? check the loss scale / learning rate)')


def coding_rate(z: Tensor,
                eps: float,
                n: Optional[int] = None,
                reduce_cov: bool = False) -> Tensor:
    """R = ½ logdet(I_d + d/(n·eps) · ZᵀZ) evaluated by Cholesky.

    Args:
        z: features, shape (n_local, d), or (V, n_local, d) for V independent rates
            evaluated in one batched Cholesky.
        eps: the official code's ``eps`` (= ε² of the paper), > 0.
        n: the sample count in α. Defaults to the number of rows whose covariance is used:
            n_local, or the global batch n_local·world_size when ``reduce_cov``.
            The official SimDINO semantics pass the global batch m·N in both cases.
        reduce_cov: sum ZᵀZ over ranks with the autograd-aware all-reduce before the
            Cholesky, so every rank evaluates the rate of the global batch. The
            all-reduce backward sums gradients over ranks (each rank receives N times
            its share), which DDP's gradient averaging turns into the exact global
            gradient.

    Returns:
        R as a float32 (float64 for float64 input) tensor of shape () or (V,).

    Raises:
        ValueError / TypeError for a bad shape or eps; on the CPU, FloatingPointError for
        non-finite features or a failed Cholesky (on an accelerator the rate is NaN instead,
        so that no step waits for the host).
    """
    _check_features(z)
    eps = _check_eps(eps)
    n_local, d = z.shape[-2], z.shape[-1]
    if n is None:
        n = global_batch_size(n_local) if reduce_cov else n_local
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f'coding_rate: n must be a positive integer, got {n!r}')
    alpha = d / (int(n) * eps)
    if not math.isfinite(alpha):
        raise ValueError(f'coding_rate: alpha = d/(n*eps) = {alpha} is not finite '
                         f'(d={d}, n={n}, eps={eps})')

    compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    with autocast_off(z.device.type):
        zc = z.to(compute_dtype)
        if reduce_cov:
            gram = differentiable_all_reduce_sum(zc.mT @ zc)  # (…, d, d)
        elif n_local < d:
            gram = zc @ zc.mT  # (…, n_local, n_local), Sylvester
        else:
            gram = zc.mT @ zc  # (…, d, d)
        size = gram.shape[-1]
        eye = torch.eye(size, dtype=compute_dtype, device=z.device)
        chol, info = torch.linalg.cholesky_ex(eye + alpha * gram)
        rate = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        # a failed factorisation leaves a partial factor whose log-diagonal can look finite
        rate = torch.where(info == 0, rate, torch.full_like(rate, float('nan')))
    if host_checks_are_free(rate):
        if bool((info != 0).any()):
            raise FloatingPointError(
                f'coding_rate: Cholesky of I + alpha*G ({size}x{size}, alpha={alpha:.4g}, '
                f'eps={eps}, {compute_dtype}) failed (info={info.tolist()}); the matrix is '
                'not numerically positive definite — try a larger eps or float64 features')
        if not bool(torch.isfinite(rate).all()):
            raise FloatingPointError(
                f'coding_rate: non-finite rate {rate.detach().tolist()} for a {size}x{size} '
                f'matrix (alpha={alpha:.4g}, eps={eps}); try a larger eps or float64 features')
    return rate
