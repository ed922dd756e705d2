"""DINOLoss and both centres against an independent float64 numpy reference.

Reference (docs/methods.md#dino-loss-and-logit-centring, docs/methods.md#probability-centring):
student ``log p_v = log_softmax(s_v / tau_s)``; teacher
``q_i = softmax((t_i - c) / tau_t)`` (logit centre, raw scores *before* the temperature) or
``q_i = softmax(t_i / tau_t - log Pbar)`` (probability centre); loss = mean over the pairs
(i, v != i) of the batch mean of ``-sum_k q log p``; afterwards the centre is updated with
momentum 0.9 from the *uncentred* statistics of every teacher row.
"""
import numpy as np
import pytest
import torch

from mmselfsup_vmf.models.losses import DINOLoss, multi_view_cross_entropy


# ----------------------------------------------------------------------------- reference
def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_softmax(x):
    return np.exp(np_log_softmax(x))


class ReferenceDINOLoss:
    """Float64 numpy DINO loss with its centre state, written from the docs."""

    def __init__(self, k, centering, student_temp=0.1, momentum=0.9):
        self.centering, self.student_temp, self.m = centering, student_temp, momentum
        self.center = np.zeros(k) if centering == 'logit' else np.full(k, 1.0 / k)

    def __call__(self, student, teacher, teacher_temp):
        student = [np.asarray(s, np.float64) for s in student]
        teacher = [np.asarray(t, np.float64) for t in teacher]
        if self.centering == 'logit':
            qs = [np_softmax((t - self.center) / teacher_temp) for t in teacher]
        else:
            qs = [np_softmax(t / teacher_temp - np.log(self.center)) for t in teacher]
        log_ps = [np_log_softmax(s / self.student_temp) for s in student]
        terms = [(-(q * log_p).sum(-1)).mean()
                 for i, q in enumerate(qs) for v, log_p in enumerate(log_ps) if v != i]
        loss = sum(terms) / len(terms)
        rows = np.concatenate(teacher)
        stat = rows.mean(0) if self.centering == 'logit' else \
            np_softmax(rows / teacher_temp).mean(0)
        self.center = self.m * self.center + (1 - self.m) * stat
        return loss, qs, log_ps

    @staticmethod
    def student_grads(qs, log_ps, student_temp):
        """dL/ds_v = sum_{i != v} (p_v - q_i) / (tau_s * B * #pairs)."""
        pairs = sum(1 for i in range(len(qs)) for v in range(len(log_ps)) if v != i)
        grads = []
        for v, log_p in enumerate(log_ps):
            p = np.exp(log_p)
            g = np.zeros_like(p)
            for i, q in enumerate(qs):
                if i != v:
                    g += p - q
            grads.append(g / (student_temp * p.shape[0] * pairs))
        return grads


def make_scores(seed, num_views, batch, k, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, k, generator=gen) for _ in range(num_views)]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize('centering', ['logit', 'probability'])
def test_loss_gradient_and_centre_over_several_steps(centering):
    k, batch, tau_t = 17, 5, 0.05
    loss_module = DINOLoss(num_prototypes=k, student_temp=0.1, center_momentum=0.9,
                           centering=centering)
    ref = ReferenceDINOLoss(k, centering)
    for step in range(4):
        # teacher scores with a per-prototype offset so the centre becomes non-uniform
        offset = torch.linspace(-0.5, 0.5, k)
        teacher = [t + offset for t in make_scores(100 + step, 2, batch, k, 0.3)]
        student = [s.requires_grad_() for s in make_scores(200 + step, 2, batch, k)
                   + make_scores(300 + step, 3, batch, k)]
        terms = loss_module(student, teacher, tau_t)
        loss = terms['loss_dino']
        loss.backward()
        expected, qs, log_ps = ref(student_np(student), teacher, tau_t)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        for s, g in zip(student, ReferenceDINOLoss.student_grads(qs, log_ps, 0.1)):
            np.testing.assert_allclose(s.grad.numpy(), g, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(loss_module.center.center.numpy(), ref.center,
                                   rtol=1e-5, atol=1e-7)
        # monitoring statistics of the (centred) teacher distribution
        q_all = np.concatenate(qs)
        entropy = -(q_all * np.log(q_all)).sum(-1).mean()
        assert not terms['teacher_entropy'].requires_grad
        assert terms['teacher_entropy'].item() == pytest.approx(entropy, rel=1e-4)
        assert terms['teacher_unique_argmax'].item() == \
            len(np.unique(q_all.argmax(-1)))
    # the centre really moved away from its start (a no-op update would fail above too)
    start = 0.0 if centering == 'logit' else 1.0 / k
    assert np.abs(ref.center - start).max() > 1e-3


def student_np(student):
    return [s.detach().numpy() for s in student]


def test_logit_centre_acts_on_raw_scores_before_the_temperature():
    """softmax((t - c)/tau) differs from softmax(t/tau - c) for a non-uniform c."""
    k, tau_t = 8, 0.04
    loss_module = DINOLoss(num_prototypes=k, centering='logit')
    c = np.linspace(-1.0, 1.0, k)
    loss_module.center.center.copy_(torch.tensor(c, dtype=torch.float32))
    t = make_scores(1, 1, 3, k)[0]
    q, raw = loss_module.teacher_distribution(t, tau_t)
    np.testing.assert_allclose(q.numpy(), np_softmax((t.numpy() - c) / tau_t), rtol=1e-5,
                               atol=1e-7)
    assert np.abs(q.numpy() - np_softmax(t.numpy() / tau_t - c)).max() > 1e-2
    np.testing.assert_allclose(raw.numpy(), np_softmax(t.numpy() / tau_t), rtol=1e-5,
                               atol=1e-7)


def test_probability_centre_divides_by_the_ema_marginal():
    """q = softmax(t / tau) / Pbar, renormalised (hand formula in numpy)."""
    k, tau_t = 6, 0.1
    loss_module = DINOLoss(num_prototypes=k, centering='probability')
    pbar = np.array([0.3, 0.1, 0.2, 0.15, 0.05, 0.2])
    loss_module.center.center.copy_(torch.tensor(pbar, dtype=torch.float32))
    t = make_scores(2, 1, 4, k)[0]
    q, _ = loss_module.teacher_distribution(t, tau_t)
    expected = np_softmax(t.numpy() / tau_t) / pbar
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('centering, absorbed', [('probability', True), ('logit', False)])
def test_running_centre_and_a_per_prototype_logit_constant(centering, absorbed):
    """The vMF term is a per-prototype constant c_k in the teacher logits. Two losses see the
    same stream of teacher scores, one with c_k added (as a vMF term with spread prototype
    norms does), each with its own running centre. The probability centre absorbs c_k at
    steady state (it divides by the EMA of softmax(l + c), which carries e^{c_k}) — at p = 256,
    tau_t = 0.07 by about 10x; the logit centre acts on the raw scores and keeps it."""
    k, dim, tau_t, batch = 256, 256, 0.07, 64
    gen = torch.Generator().manual_seed(0)
    norms = torch.exp(0.5 * torch.randn(k, generator=gen, dtype=torch.float64))
    directions = torch.nn.functional.normalize(
        torch.randn(k, dim, generator=gen, dtype=torch.float64), dim=-1)
    plain = DINOLoss(k, centering=centering).double()
    with_term = DINOLoss(k, centering=centering, vmf=True, dim=dim).double()
    distances = []
    for _ in range(80):
        y = torch.nn.functional.normalize(
            torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1)
        scores = y @ (directions * norms.unsqueeze(1)).T
        q_plain, raw_plain = plain.teacher_distribution(scores, tau_t)
        q_term, raw_term = with_term.teacher_distribution(scores, tau_t, norms)
        distances.append(0.5 * (q_term - q_plain).abs().sum(-1).mean().item())
        plain.update_center(scores, raw_plain)
        with_term.update_center(scores, raw_term)
    first, steady = distances[0], np.mean(distances[-10:])
    assert first > 0.1  # the constant matters before any centring
    if absorbed:
        assert steady < first / 4
    else:
        assert steady > 0.8 * first


def test_pairs_skip_same_view_and_average_over_terms():
    """Hand case: 2 teacher views, 3 student views -> pairs (0,1),(0,2),(1,0),(1,2)."""
    q = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    log_p = [torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]])),
             torch.log(torch.tensor([[0.9, 0.1]]))]
    expected = (-np.log(0.25) - np.log(0.9) - np.log(0.5) - np.log(0.1)) / 4
    assert multi_view_cross_entropy(q, log_p).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='at least one'):
        multi_view_cross_entropy(q[:1], log_p[:1])


def test_teacher_gets_no_gradient_and_centre_is_in_state_dict():
    k = 10
    loss_module = DINOLoss(num_prototypes=k)
    teacher = [t.requires_grad_() for t in make_scores(3, 2, 4, k)]
    student = [s.requires_grad_() for s in make_scores(4, 4, 4, k)]
    loss_module(student, teacher, 0.04)['loss_dino'].backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    state = loss_module.state_dict()
    assert list(state) == ['center.center']
    torch.testing.assert_close(state['center.center'], loss_module.center.center)


def test_loss_maths_runs_in_float32_under_bf16_autocast():
    k = 12
    loss_module = DINOLoss(num_prototypes=k)
    ref = ReferenceDINOLoss(k, 'logit')
    teacher = [t.bfloat16() for t in make_scores(5, 2, 3, k)]
    student = [s.bfloat16() for s in make_scores(6, 3, 3, k)]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = loss_module(student, teacher, 0.04)['loss_dino']
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected, _, _ = ref([s.float().numpy() for s in student],
                         [t.float().numpy() for t in teacher], 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bad_shapes_and_options():
    with pytest.raises(ValueError, match='centering'):
        DINOLoss(num_prototypes=4, centering='sinkhorn')
    loss_module = DINOLoss(num_prototypes=4)
    with pytest.raises(ValueError, match=r'num_prototypes=4.*\(2, 5\)'):
        loss_module(make_scores(0, 2, 2, 5), make_scores(0, 2, 2, 4), 0.04)
