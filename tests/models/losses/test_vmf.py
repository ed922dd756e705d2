"""vmf_log_normalizer / vmf_mean_resultant_length against independent references: mpmath Bessel
functions (60 digits), the p=3 closed form, the kappa -> 0 limit, and the numbers printed by the
script in docs/methods.md#reference-values-for-the-vmf-tests."""
import math

import mpmath
import numpy as np
import pytest
import torch

from mmselfsup_vmf.models.losses import vmf_log_normalizer, vmf_mean_resultant_length

# 41 / 42 / 43 straddle the switch between the recurrence (p < 42) and the direct expansion.
DIMS = (2, 3, 4, 5, 16, 41, 42, 43, 64, 256, 257, 768, 1024)
# Log-spaced over [1e-4, 1e5], rounded to float32 so that the float32 and float64 tests share
# the same exact inputs (and the same mpmath references).
KAPPAS = np.float32(np.logspace(-4, 5, 28)).astype(np.float64)


def mp_log_c_and_ratio(dim, kappa):
    """log C_p(kappa) and A_p(kappa) = I_{p/2}/I_{p/2-1} with mpmath at 60 digits."""
    with mpmath.workdps(60):
        nu = mpmath.mpf(dim) / 2 - 1
        if kappa == 0:
            log_c = mpmath.loggamma(mpmath.mpf(dim) / 2) - mpmath.log(2) - dim / mpmath.mpf(2) * \
                mpmath.log(mpmath.pi)
            return float(log_c), 0.0
        k = mpmath.mpf(float(kappa))
        i_nu, i_next = mpmath.besseli(nu, k), mpmath.besseli(nu + 1, k)
        log_c = nu * mpmath.log(k) - (nu + 1) * mpmath.log(2 * mpmath.pi) - mpmath.log(i_nu)
        return float(log_c), float(i_next / i_nu)


@pytest.fixture(scope='module')
def mp_reference():
    """{dim: (log C array, A array)} over KAPPAS, computed once per module (~0.3 s)."""
    return {
        dim: tuple(np.array(col) for col in zip(*(mp_log_c_and_ratio(dim, k) for k in KAPPAS)))
        for dim in DIMS
    }


def value_and_grad(kappa, dim, approximation='exact'):
    kappa = kappa.detach().clone().requires_grad_(True)
    log_c = vmf_log_normalizer(kappa, dim, approximation)
    (grad, ) = torch.autograd.grad(log_c.sum(), kappa)
    return log_c.detach(), grad


def test_float64_matches_mpmath(mp_reference):
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    for dim in DIMS:
        ref_log_c, ref_ratio = mp_reference[dim]
        log_c, grad = value_and_grad(kappa, dim)
        assert log_c.dtype == torch.float64 and grad.dtype == torch.float64
        # Module docstring: value <= 3e-11 absolute, gradient <= 3e-13 (brief: 1e-6, 1e-5).
        value_err = np.abs(log_c.numpy() - ref_log_c) / np.maximum(1.0, np.abs(ref_log_c))
        assert value_err.max() < 1e-12, (dim, value_err.max())
        assert np.abs(log_c.numpy() - ref_log_c).max() < 5e-11, dim
        assert np.abs(grad.numpy() + ref_ratio).max() < 1e-12, dim
        ratio = vmf_mean_resultant_length(kappa, dim)
        assert np.abs(ratio.numpy() - ref_ratio).max() < 1e-12, dim


def test_float32_is_the_float64_result_rounded(mp_reference):
    kappa = torch.tensor(KAPPAS, dtype=torch.float32)  # exactly the same values as KAPPAS
    for dim in DIMS:
        ref_log_c, ref_ratio = mp_reference[dim]
        log_c, grad = value_and_grad(kappa, dim)
        assert log_c.dtype == torch.float32 and grad.dtype == torch.float32
        value_err = np.abs(log_c.double().numpy() - ref_log_c)
        # Rounding to float32 costs at most 2^-24 relative (5.96e-8).
        assert np.all(value_err <= 6.0e-8 * np.abs(ref_log_c) + 1e-10), (dim, value_err.max())
        assert np.abs(grad.double().numpy() + ref_ratio).max() < 6e-8, dim


# docs/methods.md#reference-values-for-the-vmf-tests: log C and its gradient, 10 decimals.
REF_LOG_C = {
    (3, 0.1): -2.5326903584, (16, 1.0): -1.3570208777, (64, 25.0): 36.1909674061,
    (64, 1000.0): -839.8182594405, (256, 0.001): 344.3348756521, (256, 10.0): 344.1397107151,
    (256, 100.0): 326.0486721899, (256, 10000.0): -9059.2044615561,
    (256, 1 / 0.07): 343.9368920241,  # printed as kappa = 14.2857 (tau_t = 0.07)
    (768, 1.0): 1458.7205000766,
    (768, 100.0): 1452.2645803392, (768, 10000.0): -7165.3264144973,
}
REF_GRAD = {
    (3, 1.0): -0.3130352855, (16, 10.0): -0.4876216680, (64, 100.0): -0.7323801941,
    (256, 0.1): -0.0003906249, (256, 25.0): -0.0967491070, (256, 1000.0): -0.8805400656,
    (768, 10.0): -0.0130186322, (768, 1000.0): -0.6873995803,
}


def test_reference_tables():
    for (dim, k), expected in REF_LOG_C.items():
        value = vmf_log_normalizer(torch.tensor([k], dtype=torch.float64), dim)
        assert abs(value.item() - expected) < 1e-9, (dim, k)
    for (dim, k), expected in REF_GRAD.items():
        _, grad = value_and_grad(torch.tensor([k], dtype=torch.float64), dim)
        assert abs(grad.item() - expected) < 1e-9, (dim, k)


def test_p3_closed_form():
    k = np.logspace(-4, 5, 400)
    log_c, grad = value_and_grad(torch.tensor(k), 3)
    expected = np.log(k) - math.log(2 * math.pi) - k - np.log(-np.expm1(-2 * k))
    assert np.abs(log_c.numpy() - expected).max() < 1e-12 * max(1.0, np.abs(expected).max())
    big = k > 1e-2  # coth(k) - 1/k cancels below that
    expected_grad = -(1 / np.tanh(k[big]) - 1 / k[big])
    assert np.abs(grad.numpy()[big] - expected_grad).max() < 1e-12
    assert np.allclose(grad.numpy()[~big], -k[~big] / 3, rtol=1e-4, atol=0)  # -k/p for small k


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_kappa_zero_limit(dtype):
    for dim in DIMS + (100_000, ):
        expected = math.lgamma(dim / 2) - math.log(2) - dim / 2 * math.log(math.pi)
        log_c, grad = value_and_grad(torch.zeros(3, dtype=dtype), dim)
        assert torch.isfinite(log_c).all() and torch.isfinite(grad).all()
        assert torch.allclose(log_c.double(), torch.full((3, ), expected, dtype=torch.float64),
                              rtol=1e-7 if dtype == torch.float32 else 1e-13, atol=1e-10), dim
        assert (grad == 0).all()
        assert (vmf_mean_resultant_length(torch.zeros(1, dtype=dtype), dim) == 0).all()
    limits = {3: -2.5310242470, 256: 344.3348756540, 768: 1458.7211511177}
    for dim, value in limits.items():
        assert abs(vmf_log_normalizer(torch.zeros(1, dtype=torch.float64), dim).item() -
                   value) < 1e-9


def test_smooth_monotone_concave_no_jumps():
    """log C_p is decreasing and concave (its slope -A_p decreases), so every secant slope lies
    between the gradients at its two ends. A branch switch with a jump in the value or the
    gradient would break this on a dense grid."""
    k = torch.tensor(np.logspace(-4, 5, 4000))
    for dim in (2, 3, 5, 41, 42, 43, 256, 1024):
        log_c, grad = value_and_grad(k, dim)
        # float64 rounding of the two values (at small kappa the true step is below it).
        rounding = 4 * 2.3e-16 * log_c.abs().clamp(min=1).max()
        assert (torch.diff(log_c) <= rounding).all(), dim
        assert (torch.diff(grad) < 0).all(), dim
        secant = torch.diff(log_c) / torch.diff(k)
        tol = rounding / torch.diff(k)
        assert (secant <= grad[:-1] + tol).all() and (secant >= grad[1:] - tol).all(), dim


def test_gradcheck_and_gradgradcheck():
    for dim in (2, 3, 16, 42, 256):
        kappa = torch.tensor([1e-3, 0.7, 12.0, 300.0, 4e4], dtype=torch.float64,
                             requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: vmf_log_normalizer(x, dim), (kappa, ))
        assert torch.autograd.gradgradcheck(lambda x: vmf_log_normalizer(x, dim), (kappa, ))
        assert torch.autograd.gradcheck(lambda x: vmf_mean_resultant_length(x, dim), (kappa, ))


def test_mean_resultant_length_derivative_against_mpmath():
    for dim, k in ((3, 0.5), (16, 10.0), (256, 100.0), (768, 2000.0)):
        with mpmath.workdps(40):
            nu = mpmath.mpf(dim) / 2 - 1
            expected = mpmath.diff(lambda x: mpmath.besseli(nu + 1, x) / mpmath.besseli(nu, x),
                                   mpmath.mpf(k))
        kappa = torch.tensor([k], dtype=torch.float64, requires_grad=True)
        (grad, ) = torch.autograd.grad(vmf_mean_resultant_length(kappa, dim).sum(), kappa)
        assert abs(grad.item() - float(expected)) < 1e-11, dim
    kappa0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (grad0, ) = torch.autograd.grad(vmf_mean_resultant_length(kappa0, 64).sum(), kappa0)
    assert abs(grad0.item() - 1 / 64) < 1e-14  # A_p(k) ~ k/p


# docs/methods.md#vmf-log-normaliser: the Debye closed form at p=256, kappa: (value, d/dkappa).
REF_DEBYE_256 = {
    0.001: (344.3342194854, -3.9060e-6), 1.0: (344.3322664983, -0.0039059487),
    10.0: (344.1390665565, -0.0390011530), 25.0: (343.1192928057, -0.0967436488),
    100.0: (326.0486480009, -0.3445331378), 1000.0: (-345.5328151056, -0.8805401780),
    10000.0: (-9059.2044490598, -0.9873306498),
}
# Debye minus exact, 3 significant digits (same script).
REF_DEBYE_ERROR = {
    (3, 0.001): -1.53e-01, (3, 1.0): 3.29e-02, (16, 10.0): 4.41e-03, (64, 25.0): -6.28e-05,
    (256, 100.0): -2.42e-05, (768, 0.1): -2.18e-04, (768, 1000.0): 9.19e-05,
}


def test_debye_option_reproduces_reference_and_is_less_accurate():
    k = torch.tensor(list(REF_DEBYE_256), dtype=torch.float64)
    log_c, grad = value_and_grad(k, 256, 'debye')
    expected = torch.tensor(list(REF_DEBYE_256.values()), dtype=torch.float64)
    assert torch.allclose(log_c, expected[:, 0], rtol=0, atol=1e-9)
    assert torch.allclose(grad, expected[:, 1], rtol=0, atol=1e-10)
    for (dim, kappa), diff in REF_DEBYE_ERROR.items():
        x = torch.tensor([kappa], dtype=torch.float64)
        got = vmf_log_normalizer(x, dim, 'debye') - vmf_log_normalizer(x, dim)
        assert abs(got.item() - diff) <= 0.01 * abs(diff), (dim, kappa)
    # Documented: Debye is low by about 1/(12 nu) at small kappa.
    for dim in (64, 256, 768):
        ref = mp_log_c_and_ratio(dim, 1e-3)[0]
        err = vmf_log_normalizer(torch.tensor([1e-3], dtype=torch.float64), dim, 'debye') - ref
        assert abs(err.item() + 1 / (12 * (dim / 2 - 1))) < 0.02 / (12 * (dim / 2 - 1)), dim
    # Evaluated in float32 it also carries float32 rounding (bounded here by 1e-3 at p=256).
    k32 = torch.tensor(KAPPAS[KAPPAS <= 1e4], dtype=torch.float32)
    debye32 = vmf_log_normalizer(k32, 256, 'debye')
    assert debye32.dtype == torch.float32
    exact = vmf_log_normalizer(k32.double(), 256)
    assert (debye32.double() - exact).abs().max() < 1e-3


def test_three_prototype_logits():
    """docs/methods.md#reference-values-for-the-vmf-tests: logits s/tau + log C_256(||w||/tau)."""
    tau = 0.1
    norms = torch.tensor([20.0, 5.0, 10.0], dtype=torch.float64)
    dots = torch.tensor([10.0, 4.5, 7.0], dtype=torch.float64)
    logits = dots / tau + vmf_log_normalizer(norms / tau, 256)
    expected = torch.tensor([380.39774405, 384.54014479, 396.04867219], dtype=torch.float64)
    assert torch.allclose(logits, expected, rtol=0, atol=1e-6)
    probs = logits.softmax(0)
    assert abs(probs[0].item() - 1.6e-7) < 0.05e-7
    assert torch.allclose(probs[1:], torch.tensor([1.004e-5, 0.99998980], dtype=torch.float64),
                          rtol=0, atol=1e-8)
    debye = dots / tau + vmf_log_normalizer(norms / tau, 256, 'debye')
    assert torch.allclose(
        debye, torch.tensor([380.39801862, 384.53973759, 396.04864800], dtype=torch.float64),
        rtol=0, atol=1e-6)
    # float32 (the training path): same logits to float32 rounding of ~400.
    logits32 = dots.float() / tau + vmf_log_normalizer(norms.float() / tau, 256)
    assert torch.allclose(logits32.double(), expected, rtol=0, atol=1e-4)


def test_vectorised_65536_prototypes_float32(mp_reference):
    kappa_values = np.concatenate([[0.0], KAPPAS])
    index = torch.arange(65536) % len(kappa_values)
    kappa = torch.tensor(kappa_values, dtype=torch.float32)[index]
    for dim in (3, 256):
        log_c, grad = value_and_grad(kappa, dim)
        assert log_c.shape == (65536, ) and torch.isfinite(log_c).all()
        assert torch.isfinite(grad).all()
        ref_log_c = np.concatenate([[mp_log_c_and_ratio(dim, 0)[0]], mp_reference[dim][0]])
        err = np.abs(log_c.double().numpy() - ref_log_c[index.numpy()])
        assert err.max() <= 6e-8 * np.abs(ref_log_c).max() + 1e-10


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_inside_autocast(dtype):
    kappa = torch.tensor([0.0, 1e-3, 2.0, 14.29, 250.0, 6e4], dtype=dtype, requires_grad=True)
    with torch.autocast(device_type='cpu', dtype=dtype):
        log_c = vmf_log_normalizer(kappa, 256)
        ratio = vmf_mean_resultant_length(kappa, 256)
    assert log_c.dtype == torch.float32 and ratio.dtype == torch.float32
    (grad, ) = torch.autograd.grad(log_c.sum(), kappa)
    assert grad.dtype == dtype and torch.isfinite(grad).all() and torch.isfinite(log_c).all()
    # Reference at the half-precision-rounded kappa actually passed in.
    ref = np.array([mp_log_c_and_ratio(256, float(k)) for k in kappa.detach().double()])
    assert np.all(np.abs(log_c.detach().double().numpy() - ref[:, 0]) <=
                  6e-8 * np.abs(ref[:, 0]) + 1e-10)
    assert np.abs(ratio.detach().double().numpy() - ref[:, 1]).max() < 1e-7
    assert np.abs(grad.double().numpy() + ref[:, 1]).max() <= 4e-3  # grad rounded to `dtype`


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
def test_cuda_matches_mpmath(mp_reference):
    kappa = torch.tensor(KAPPAS, dtype=torch.float32, device='cuda')
    for dim in (2, 3, 64, 256, 1024):
        log_c, grad = value_and_grad(kappa, dim)
        ref_log_c, ref_ratio = mp_reference[dim]
        assert log_c.device.type == 'cuda'
        assert np.all(np.abs(log_c.double().cpu().numpy() - ref_log_c) <=
                      6e-8 * np.abs(ref_log_c) + 1e-10)
        assert np.abs(grad.double().cpu().numpy() + ref_ratio).max() < 6e-8


def test_bad_input_errors():
    k = torch.ones(3)
    with pytest.raises(ValueError, match="unknown vMF approximation 'laplace'"):
        vmf_log_normalizer(k, 256, 'laplace')
    for bad_dim in (1, 0, 2.5, 256.0, True, '256'):
        with pytest.raises(ValueError, match='dim must be an integer >= 2'):
            vmf_log_normalizer(k, bad_dim)
        with pytest.raises(ValueError, match='dim must be an integer >= 2'):
            vmf_mean_resultant_length(k, bad_dim)
    with pytest.raises(ValueError, match='dim=2'):
        vmf_log_normalizer(k, 2, 'debye')
    with pytest.raises(ValueError, match='kappa must be >= 0'):
        vmf_log_normalizer(torch.tensor([1.0, -0.5]), 256)
    with pytest.raises(ValueError, match='kappa must be >= 0'):
        vmf_mean_resultant_length(torch.tensor([-1.0]), 256)
    with pytest.raises(TypeError, match='floating-point'):
        vmf_log_normalizer(torch.tensor([1, 2]), 256)
    with pytest.raises(TypeError, match='torch.Tensor'):
        vmf_log_normalizer(1.0, 256)
    assert torch.isfinite(vmf_log_normalizer(torch.tensor([1e5]), 2)).all()  # p=2 is fine


def test_debye_polynomials_match_abramowitz_stegun():
    """u_1..u_4 generated by the recurrence equal A&S 9.3.9 (hand-copied)."""
    from fractions import Fraction

    from mmselfsup_vmf.models.losses.vmf import _debye_polynomials
    printed = {  # {power of t: numerator}, denominator
        1: ({1: 3, 3: -5}, 24),
        2: ({2: 81, 4: -462, 6: 385}, 1152),
        3: ({3: 30375, 5: -369603, 7: 765765, 9: -425425}, 414720),
        4: ({4: 4465125, 6: -94121676, 8: 349922430, 10: -446185740, 12: 185910725}, 39813120),
    }
    polys = _debye_polynomials(4)
    for k, (numerators, denominator) in printed.items():
        expected = [Fraction(numerators.get(j, 0), denominator) for j in range(3 * k + 1)]
        assert polys[k] == expected, k
