"""Precision and host-sync rules shared by every loss.

- The loss maths never runs in half precision: inputs are taken to float32 (float64 stays
  float64, so tests and references keep their precision) with autocast switched off.
- Checks that read a tensor value on the host (``bool(t.any())``) cost a device
  synchronisation on an accelerator; they run only on the CPU, where they are free. On an
  accelerator a failure is made visible on the device instead (a NaN in the affected term),
  and the divergence guard names the term at its next check.
"""
import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or unchanged if it is float64."""
    return x if x.dtype == torch.float64 else x.float()


def autocast_off(device_type: str):
    """Context in which autocast does not lower the precision of the loss maths."""
    return torch.autocast(device_type=device_type, enabled=False)


# device types on which value checks run (reading a CPU tensor on the host costs no sync)
HOST_CHECK_DEVICES = {'cpu'}


def host_checks_are_free(x: torch.Tensor) -> bool:
    """Whether a value check on ``x`` can run without a device synchronisation."""
    return x.device.type in HOST_CHECK_DEVICES


@torch.no_grad()
def prototype_usage_stats(probs: torch.Tensor, prefix: str = '') -> dict:
    r"""Detached monitoring statistics of teacher distributions (..., K), without a host sync.

    ``{prefix}teacher_entropy``: mean :math:`-\sum_k p_k \log p_k` over rows;
    ``{prefix}teacher_unique_argmax``: the number of distinct argmax prototypes over rows.
    """
    p = probs.reshape(-1, probs.shape[-1])
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
    hit = torch.zeros(p.shape[-1], dtype=p.dtype, device=p.device)
    hit.index_fill_(0, p.argmax(-1), 1.0)  # distinct count on the device (unique() syncs)
    return {f'{prefix}teacher_entropy': entropy, f'{prefix}teacher_unique_argmax': hit.sum()}
