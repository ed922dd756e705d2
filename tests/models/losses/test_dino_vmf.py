"""DINO-vMF: the three-prototype logit example, the reduction to DINO, centring vs a
per-prototype constant, and half-precision robustness. (That the DINO-vMF demo config learns
is tested with the iBOT demos in tests/models/algorithms/test_ibot.py.)"""
import copy

import numpy as np
import pytest
import torch

from mmselfsup_vmf.models.heads import DINOHead
from mmselfsup_vmf.models.losses import (
    DINOLoss,
    LogitCenter,
    PrototypeDistillation,
    iBOTPatchLoss,
    prototype_logits,
)

# docs/methods.md#reference-values-for-the-vmf-tests (mpmath, 60 digits): log C_256 at the
# student's reference kappa 1/tau = 10
LOG_C256_AT_10 = 344.1397107151
# the same script: the Debye closed form at p = 256, kappa = 10
DEBYE_LOG_C256_AT_10 = 344.1390665565
# the same script: d/dkappa log C_256 = -A_256(kappa) at kappa = 10, 25, 100
A256 = {10.0: 0.0390035345, 25.0: 0.0967491070, 100.0: 0.3445393252}


# ------------------------------------------------------- three-prototype example
@pytest.mark.parametrize('approximation, logits_ref, log_c_ref', [
    ('exact', [380.39774405, 384.54014479, 396.04867219], LOG_C256_AT_10),
    ('debye', [380.39801862, 384.53973759, 396.04864800], DEBYE_LOG_C256_AT_10),
])
def test_three_prototype_example(approximation, logits_ref, log_c_ref):
    """p = 256, tau = 0.1, unit y; ||w|| = (20, 5, 10), cos = (0.5, 0.9, 0.7), so the dot
    products are (10, 4.5, 7) and kappa = (200, 50, 100). prototype_logits subtracts the
    constant log C_p(1/tau), which the reference values do not."""
    scores = torch.tensor([[10.0, 4.5, 7.0]], dtype=torch.float64)
    norms = torch.tensor([20.0, 5.0, 10.0], dtype=torch.float64)
    logits = prototype_logits(scores, 0.1, norms, dim=256, approximation=approximation)
    np.testing.assert_allclose(logits[0].numpy() + log_c_ref, logits_ref, rtol=0, atol=2e-7)
    probs = torch.softmax(logits, -1)[0].numpy()
    np.testing.assert_allclose(probs, [1.6e-7, 1.004e-5, 0.99998980], rtol=0, atol=5e-9)
    # plain DINO puts all the mass on the large-norm prototype instead
    plain = torch.softmax(prototype_logits(scores, 0.1), -1)[0].numpy()
    np.testing.assert_allclose(plain, [1.0, 1.3e-24, 9.4e-14], rtol=0.05, atol=0)
    # float32 input gives the same to float32 precision (the term is computed outside autocast)
    logits32 = prototype_logits(scores.float(), 0.1, norms.float(), dim=256)
    if approximation == 'exact':
        np.testing.assert_allclose(logits32[0].numpy() + log_c_ref, logits_ref, atol=1e-4)


def test_vmf_term_gradient_reaches_the_norms():
    """d l_k / d||w_k|| = -(1/tau) A_p(||w_k||/tau) from the log-normaliser
    (docs/methods.md#dino-vmf-logits)."""
    norms = torch.tensor([1.0, 2.5, 10.0], dtype=torch.float64, requires_grad=True)
    logits = prototype_logits(torch.zeros(1, 3, dtype=torch.float64), 0.1, norms, dim=256)
    logits.sum().backward()
    expected = [-10.0 * A256[k] for k in (10.0, 25.0, 100.0)]
    np.testing.assert_allclose(norms.grad.numpy(), expected, rtol=1e-8)


def test_prototype_logits_errors():
    with pytest.raises(ValueError, match='dim'):
        prototype_logits(torch.zeros(2, 3), 0.1, torch.ones(3))
    with pytest.raises(ValueError, match='prototype_norms has 4 entries'):
        prototype_logits(torch.zeros(2, 3), 0.1, torch.ones(4), dim=8)
    with pytest.raises(ValueError, match='student_norms and teacher_norms'):
        DINOLoss(3, vmf=True, dim=8)([torch.zeros(2, 3)] * 3, [torch.zeros(2, 3)] * 2, 0.04)


# --------------------------------------------------------------------- DINO-vMF == DINO
def _reference_dino_loss(student_scores, teacher_scores, center, tau_s, tau_t):
    """DINO (logit centring) in float64 torch, written from the paper's formulas."""
    qs = [torch.softmax((t - center) / tau_t, -1) for t in teacher_scores]
    log_ps = [torch.log_softmax(s / tau_s, -1) for s in student_scores]
    terms = [(-q * log_ps[v]).sum(-1).mean() for i, q in enumerate(qs)
             for v in range(len(log_ps)) if v != i]
    return sum(terms) / len(terms)


@pytest.mark.parametrize('centering', ['logit', 'probability'])
def test_vmf_with_normalised_prototypes_reduces_to_dino(centering):
    """norm_last_layer=True: every kappa equals 1/tau, so the vMF term is one constant per
    side and DINO-vMF gives DINO's loss, centre and gradients (float64, 3 steps)."""
    torch.manual_seed(0)
    head = DINOHead(16, hidden_channels=32, bottleneck_channels=8, num_prototypes=12,
                    norm_last_layer=True).double()
    teacher = copy.deepcopy(head).requires_grad_(False)
    plain = DINOLoss(12, centering=centering, vmf=False)
    vmf = DINOLoss(12, centering=centering, vmf=True, dim=8)
    center_ref = torch.zeros(12, dtype=torch.float64)
    for step in range(3):
        feats = [torch.randn(5, 16, dtype=torch.float64) for _ in range(4)]
        results = []
        for loss_fn, use_norms in ((plain, False), (vmf, True)):
            head.zero_grad()
            with torch.no_grad():
                t_scores = [teacher(f) for f in feats[:2]]
            s_scores = [head(f) for f in feats]
            kwargs = dict(student_norms=head.prototype_norms(),
                          teacher_norms=teacher.prototype_norms()) if use_norms else {}
            loss = loss_fn(s_scores, t_scores, 0.04, **kwargs)['loss_dino']
            loss.backward()
            grads = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
            results.append((loss.detach(), grads))
        (loss_a, grads_a), (loss_b, grads_b) = results
        assert loss_b.dtype == torch.float64
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-12)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) == 7  # 3 Linear + v
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(vmf.center.center, plain.center.center, rtol=1e-6, atol=0)
        if centering == 'logit':  # and both equal DINO written from the paper
            with torch.no_grad():
                ref = _reference_dino_loss([head(f) for f in feats],
                                           [teacher(f) for f in feats[:2]], center_ref, 0.1, 0.04)
                batch_mean = torch.cat([teacher(f) for f in feats[:2]]).mean(0)
            assert float(loss_a) == pytest.approx(float(ref), rel=1e-6)  # centre is float32
            center_ref = 0.9 * center_ref + 0.1 * batch_mean


# --------------------------------------------------------------------- centring
def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _stream(steps=150, batch=6, k=5, seed=1):
    rng = np.random.default_rng(seed)
    return [2.0 * rng.standard_normal((batch, k)) for _ in range(steps)]


PER_PROTOTYPE = np.array([0.0, 1.5, -1.0, 0.5, 2.0])


def _probability_centering_q(batches, offset):
    """Probability centring with per-prototype offset b, through PrototypeDistillation:
    teacher logits l + b (b enters as a vMF-free constant via the scores with tau = 1)."""
    module = PrototypeDistillation(5, centering='probability', center_momentum=0.9)
    for logits in batches:
        scores = torch.tensor(logits + offset, dtype=torch.float64)
        q, raw = module.teacher_distribution(scores, 1.0)
        module.update_center(scores, raw)
    return q.numpy()


def _numpy_probability_centering_q(batches, offset):
    pbar = np.full(5, 0.2)
    for logits in batches:
        full = logits + offset
        q = _softmax(full - np.log(pbar))
        pbar = 0.9 * pbar + 0.1 * _softmax(full).mean(0)
    return q


def test_per_prototype_constant_survives_probability_centering():
    """A constant b_k added to every teacher logit of prototype k: DINO's logit centring of
    the full logits cancels it (the centre learns E[l] + b), probability centring does not.

    Under probability centring, at steady state b_k cancels between numerator and Pbar_k but
    still acts through each row's normaliser sum_j exp(l_j + b_j), so q changes; under logit
    centring of the full logits q becomes exactly independent of b.
    """
    batches = _stream()
    q_b = _probability_centering_q(batches, PER_PROTOTYPE)
    q_0 = _probability_centering_q(batches, 0 * PER_PROTOTYPE)
    np.testing.assert_allclose(q_b, _numpy_probability_centering_q(batches, PER_PROTOTYPE),
                               rtol=1e-5, atol=1e-7)  # the Pbar buffer is float32
    assert np.abs(q_b - q_0).max() > 0.05

    def logit_centred_full(offset):  # the contrast: LogitCenter applied to l + b itself
        center = LogitCenter(5, 0.9).double()
        for logits in batches:
            full = torch.tensor(logits + offset, dtype=torch.float64)
            q = torch.softmax(center.center_scores(full), -1)
            center.update(full, None)
        return q.numpy()

    # (the centre's batch mean is taken in float32, hence 1e-6 rather than 1e-12)
    np.testing.assert_allclose(logit_centred_full(PER_PROTOTYPE), logit_centred_full(0),
                               rtol=0, atol=1e-6)


def test_logit_centering_on_raw_scores_keeps_the_vmf_term():
    """centering='logit' centres the raw scores only; the vMF term is added afterwards and
    therefore shifts log q by exactly Delta_k (up to a per-row constant), at every step."""
    tau, p = 0.05, 16
    norms = torch.tensor([0.5, 0.8, 1.0, 1.3, 2.0], dtype=torch.float64)
    plain = PrototypeDistillation(5, centering='logit')
    vmf = PrototypeDistillation(5, centering='logit', vmf=True, dim=p)
    delta = (prototype_logits(torch.zeros(1, 5, dtype=torch.float64), tau, norms, dim=p)[0]
             .numpy())
    assert np.ptp(delta) > 1.0  # the term is not negligible here
    for logits in _stream(steps=20):
        scores = torch.tensor(logits * tau, dtype=torch.float64)
        q_plain, _ = plain.teacher_distribution(scores, tau)
        q_vmf, raw = vmf.teacher_distribution(scores, tau, norms)
        plain.update_center(scores, None)
        vmf.update_center(scores, raw)
        shift = np.log(q_vmf.numpy()) - np.log(q_plain.numpy()) - delta
        np.testing.assert_allclose(shift - shift[:, :1], 0.0, atol=1e-9)


# --------------------------------------------------------------------- half precision
def _extreme_head(k=64, p=32):
    """Prototype norms spread over 1e-3 .. 1e4 (student kappa up to 1e5 at tau_s = 0.1)."""
    torch.manual_seed(0)
    head = DINOHead(24, hidden_channels=48, bottleneck_channels=p, num_prototypes=k,
                    norm_last_layer=False)
    with torch.no_grad():
        g = head.last_layer.parametrizations.weight.original0
        g.copy_(torch.logspace(-3, 4, k).unsqueeze(1))
    return head


def _collapsed_features(batch=8, dim=24):
    base = torch.randn(1, dim)
    return base + 1e-6 * torch.randn(batch, dim)


@pytest.mark.parametrize('approximation', ['exact', 'debye'])
def test_bf16_autocast_extreme_inputs_give_finite_loss_and_grads(approximation):
    head = _extreme_head()
    teacher = copy.deepcopy(head).requires_grad_(False)
    loss_fn = DINOLoss(64, centering='probability', vmf=True, dim=32,
                       approximation=approximation)
    patch_fn = iBOTPatchLoss(64, centering='probability', vmf=True, dim=32,
                             approximation=approximation)
    feats = [_collapsed_features() for _ in range(4)]
    patches = [_collapsed_features(8 * 4).reshape(8, 4, 24) for _ in range(2)]
    masks = [torch.ones(8, 4, dtype=torch.bool)] * 2
    with torch.autocast('cpu', dtype=torch.bfloat16):
        t_scores = [teacher(f) for f in feats[:2]]
        s_scores = [head(f) for f in feats]
        assert head.mlp[0](feats[0]).dtype == torch.bfloat16  # the MLP ran in half precision
        assert s_scores[0].dtype == torch.float32  # the prototype scores in float32
        loss = loss_fn(s_scores, t_scores, 0.04, student_norms=head.prototype_norms(),
                       teacher_norms=teacher.prototype_norms())['loss_dino']
        patch_loss = patch_fn([head(x, patch=True) for x in patches],
                              [teacher(x, patch=True) for x in patches], masks, 0.07,
                              student_norms=head.prototype_norms(),
                              teacher_norms=teacher.prototype_norms())['loss_patch']
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(patch_loss)
    (loss + patch_loss).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert torch.isfinite(loss_fn.center.center).all()


def test_fp16_scores_and_norms_give_finite_loss():
    """fp16 head outputs (as on a GPU with autocast) and fp16 norms up to 1e4."""
    torch.manual_seed(0)
    k = 64
    norms = torch.logspace(-3, 4, k).half()
    y = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1).expand(8, 32)  # collapsed
    directions = torch.nn.functional.normalize(torch.randn(k, 32), dim=-1)
    scores = (y @ (directions * norms.float().unsqueeze(1)).T).half()
    student = [scores.clone().requires_grad_() for _ in range(4)]
    norms_s = norms.clone().float().requires_grad_()
    loss_fn = DINOLoss(k, centering='probability', vmf=True, dim=32)
    loss = loss_fn(student, [scores, scores], 0.04, student_norms=norms_s.half(),
                   teacher_norms=norms)['loss_dino']
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(s.grad.float()).all() for s in student)
    assert torch.isfinite(norms_s.grad).all()
    # kappa = 1e5 on the student side: the logits stay finite
    assert torch.isfinite(prototype_logits(scores, 0.1, norms, dim=32)).all()
