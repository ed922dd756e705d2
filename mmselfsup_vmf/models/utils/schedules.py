"""Closed-form schedules used by the self-distillation methods (pure functions)."""
import math


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    r"""Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps``).

    .. math:: v(t) = e + \tfrac12 (s - e)\,(1 + \cos(\pi t / T)),

    clamped to ``end`` for ``t >= T``. This is DINO's ``cosine_scheduler`` without warm-up,
    used per iteration for the teacher momentum (0.996 -> 1) and the weight decay (0.04 -> 0.4).
    """
    if total_steps <= 0:
        raise ValueError(f'total_steps must be positive, got {total_steps}')
    if step >= total_steps:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total_steps))


def teacher_temperature(epoch: int, warmup_epochs: int, start: float, end: float) -> float:
    r"""DINO's teacher temperature: ``linspace(start, end, W)[epoch]`` then ``end``.

    .. math:: \tau_t(e) = s + (t - s)\,\frac{e}{W - 1}\ \ (e < W), \qquad \tau_t(e) = t\ \ (e \ge W).

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
