"""The losses read no tensor value on the host in a training step on an accelerator.

Every device-to-host read (``.item()``, ``bool(t)``, ``.tolist()``) dispatches
``aten._local_scalar_dense``, and ops whose output size depends on the data (``unique``,
``nonzero``, boolean indexing) read it inside the kernel — on a GPU both are synchronisations
that stall the step. A ``TorchDispatchMode`` counts those calls in a forward + backward of each
loss, with the value checks configured as on an accelerator (``numerics.HOST_CHECK_DEVICES``
empty). On the CPU, where such reads are free, the same inputs raise the detailed errors.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmselfsup_vmf.models.losses import (
    DINOLoss,
    SimDINOLoss,
    coding_rate,
    iBOTPatchLoss,
    numerics,
    vmf_log_normalizer,
)


class CountHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        bool_index = name.startswith('aten::index') and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a)
        if bool_index or func is torch.ops.aten._local_scalar_dense.default or any(
                op in name for op in ('unique', 'nonzero', 'masked_select')):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def as_on_an_accelerator(monkeypatch):
    monkeypatch.setattr(numerics, 'HOST_CHECK_DEVICES', set())


def scores(seed, views, batch, k, tokens=None):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, k) if tokens is None else (batch, tokens, k)
    return [torch.randn(shape, generator=gen).requires_grad_() for _ in range(views)]


def count_reads(step):
    with CountHostReads() as mode:
        step()
    return len(mode.reads)


def test_the_counter_sees_host_reads():
    x = torch.ones(3)
    assert count_reads(lambda: (x.sum().item(), bool(x.any()), torch.unique(x), x[x > 0])) == 4


def test_dino_vmf_and_ibot_vmf_losses_read_nothing_on_the_host(as_on_an_accelerator):
    k, batch = 32, 4
    norms = (torch.rand(k) + 0.5).requires_grad_()
    cls_loss = DINOLoss(k, centering='probability', vmf=True, dim=16)
    patch_loss = iBOTPatchLoss(k, centering='probability', vmf=True, dim=16)
    masks = [torch.rand(batch, 3) > 0.5 for _ in range(2)]

    def step():
        cls = cls_loss(scores(0, 4, batch, k), scores(1, 2, batch, k), 0.04,
                       student_norms=norms, teacher_norms=norms.detach())
        patch = patch_loss(scores(2, 2, batch, k, 3), scores(3, 2, batch, k, 3), masks, 0.07,
                           student_norms=norms, teacher_norms=norms.detach())
        (cls['loss_dino'] + patch['loss_patch']).backward()
        # the statistics are tensors on the device too
        assert isinstance(cls['teacher_unique_argmax'], torch.Tensor)

    assert count_reads(step) == 0
    assert norms.grad is not None


def test_simdino_loss_and_coding_rate_read_nothing_on_the_host(as_on_an_accelerator):
    gen = torch.Generator().manual_seed(0)
    student = [F.normalize(torch.randn(8, 16, generator=gen), dim=-1).requires_grad_()
               for _ in range(4)]
    teacher = [F.normalize(torch.randn(8, 16, generator=gen), dim=-1) for _ in range(2)]

    def step():
        out = SimDINOLoss(eps=0.05)(student, teacher)
        (out['loss_comp'] + out['loss_expa']).backward()
        vmf_log_normalizer(torch.rand(8) * 100, 16)

    assert count_reads(step) == 0
    assert student[0].grad is not None


def test_non_finite_rate_is_nan_on_an_accelerator_and_an_error_on_the_cpu(monkeypatch):
    z = torch.randn(6, 4)
    z[2, 1] = float('nan')
    with pytest.raises(FloatingPointError, match='NaN or Inf'):
        coding_rate(z, 0.05)
    # a matrix whose Cholesky fails: alpha * G with G indefinite is not reachable from real
    # features, so use a huge alpha that overflows float32 to inf
    huge = torch.full((6, 4), 1e30)
    with pytest.raises(FloatingPointError, match='Cholesky|non-finite'):
        coding_rate(huge, 0.05)
    monkeypatch.setattr(numerics, 'HOST_CHECK_DEVICES', set())
    assert torch.isnan(coding_rate(z, 0.05))
    assert not torch.isfinite(coding_rate(huge, 0.05))
