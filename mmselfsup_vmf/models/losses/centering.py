"""Teacher centering: DINO's logit centre and DINO-vMF's probability centre.

Both keep their statistic in a registered buffer (saved in checkpoints, restored on resume)
and update it *after* the loss from statistics all-reduced over ranks, as DINO does.
"""
import torch
from mmengine import dist
from torch import nn

from .numerics import at_least_float32


def ema_(buffer: torch.Tensor, batch_value: torch.Tensor, momentum: float) -> None:
    r"""In-place EMA :math:`b \leftarrow m\,b + (1 - m)\,x` (DINO's centre update)."""
    buffer.mul_(momentum).add_(batch_value.to(buffer.dtype), alpha=1 - momentum)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every leading dim of ``x`` (..., K) and over all ranks -> (K,).

    Sum and row count travel in one all-reduce; the count is filled on the device
    (``torch.full``) rather than copied from the host, which would wait for the device.
    """
    x = at_least_float32(x.detach()).reshape(-1, x.shape[-1])  # float64 stays float64
    count = torch.full((1, ), float(x.shape[0]), dtype=x.dtype, device=x.device)
    total = torch.cat([x.sum(0), count])
    if dist.get_world_size() > 1:
        dist.all_reduce(total, op='sum')
    return total[:-1] / total[-1:]


class LogitCenter(nn.Module):
    r"""DINO's centre of the raw teacher scores: :math:`q = \mathrm{softmax}((s_t - c)/\tau_t)`.

    :math:`c \leftarrow m c + (1-m)\,\overline{s_t}`, the mean over every teacher row of the
    global batch (all views, all ranks). Applied to the raw scores only, so a vMF term added
    afterwards is not cancelled.
    """

    def __init__(self, num_prototypes: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer('center', torch.zeros(num_prototypes))

    def center_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores - self.center

    @torch.no_grad()
    def update(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        ema_(self.center, global_mean(scores), self.momentum)


class ProbabilityCenter(nn.Module):
    r"""DINO-vMF's centre in probability space.

    .. math::
        \bar P \leftarrow m \bar P + (1-m)\,\overline{\mathrm{softmax}(l_t)}, \qquad
        q = \mathrm{softmax}(l_t - \log \bar P),

    i.e. one Sinkhorn column step with an EMA marginal (an adaptive prior
    :math:`\pi_k \propto 1/\bar P_k`). :math:`\bar P` starts at :math:`1/K` and is updated from the
    *uncentred* teacher probabilities. A per-prototype constant :math:`c_k` in :math:`l_t` (the
    vMF term) enters both the numerator and :math:`\bar P_k`, so at steady state the centre
    absorbs part of it and the rest acts through the row normaliser; how much is absorbed
    depends on p, :math:`\tau_t` and the spread of the prototype norms (measured in
    ``docs/methods.md#centring``). ``LogitCenter`` keeps all of it.
    """

    def __init__(self, num_prototypes: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer('center', torch.full((num_prototypes,), 1.0 / num_prototypes))

    def center_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # the floor keeps log finite if a prototype's mass underflows to 0 in fp32
        return logits - torch.log(self.center.clamp_min(1e-30))

    @torch.no_grad()
    def update(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        ema_(self.center, global_mean(probs), self.momentum)
