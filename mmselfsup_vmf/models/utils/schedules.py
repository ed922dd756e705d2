"""Closed-form schedules of the self-distillation methods (pure functions).

The lr, weight-decay and EMA-momentum cosines are mmengine's schedulers and mmpretrain's
``CosineEMA``; only DINO's per-epoch teacher temperature is not an mmengine scheduler.
"""


def teacher_temperature(epoch: int, warmup_epochs: int, start: float, end: float) -> float:
    r"""DINO's teacher temperature: ``linspace(start, end, W)[epoch]`` then ``end``.

    .. math::
        \tau_t(e) = s + (t - s)\,\frac{e}{W - 1}\ \ (e < W), \qquad \tau_t(e) = t\ \ (e \ge W).

    One value per epoch, exactly as DINO's ``np.linspace`` array (``W = 0``: always ``end``;
    ``W = 1``: ``start`` in epoch 0, then ``end``).
    """
    if epoch < 0:
        raise ValueError(f'epoch must be >= 0, got {epoch}')
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)
