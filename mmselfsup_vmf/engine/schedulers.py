"""A linear warm-up in closed form, as ``np.linspace``: DINO's warm-up can start at exactly 0.

DINO, iBOT and SimDINO warm the learning rate up with ``np.linspace(0, peak, W)`` per iteration
(``cosine_scheduler`` in facebookresearch/dino ``utils.py`` at 7c446df): 0 at iteration 0, the
peak at iteration ``W - 1``, then the cosine. mmengine's ``LinearLR`` has the same shape
(its factor reaches ``end_factor`` at ``end - 1``) but is chainable: each value is the previous
one times a ratio, so it cannot start at 0. :class:`LinspaceLR` keeps ``LinearLR``'s arguments
and computes each value from the base value instead.

``endpoint=False`` is ``np.linspace(..., endpoint=False)``: the peak is reached at ``end``, not
``end - 1`` (DINOv2's and SimDINOv2's ``CosineScheduler``: ``start + (peak - start) * it / W``).
In both cases the scheduler also writes ``end_factor`` at step ``end``: mmengine's cosine that
follows takes its first value from the optimizer, so it starts from the peak even when the
warm-up's last point is not the peak (``endpoint=False``, or ``W = 1`` where ``np.linspace``
gives only the start).
"""
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, LinearParamScheduler
from mmengine.registry import PARAM_SCHEDULERS


@PARAM_SCHEDULERS.register_module()
class LinspaceParamScheduler(LinearParamScheduler):
    """``base x np.linspace(start_factor, end_factor, end - begin, endpoint)[step]``.

    Same arguments as mmengine's ``LinearParamScheduler`` plus ``endpoint``; ``start_factor``
    may be 0 and defaults to 0 (DINO's warm-up).
    """

    def __init__(self, optimizer, param_name: str, start_factor: float = 0.0,
                 end_factor: float = 1.0, begin: int = 0, end: int = INF,
                 endpoint: bool = True, last_step: int = -1, by_epoch: bool = True,
                 verbose: bool = False):
        if end == INF:
            raise ValueError(f'{type(self).__name__} needs a finite end (the warm-up length), '
                             f'got end={end}; set end=<warm-up epochs or iterations>')
        self.num = int(end - begin)
        self.endpoint = bool(endpoint)
        # one step past the warm-up: the hand-off value end_factor (see the module docstring)
        super().__init__(optimizer, param_name, start_factor=start_factor,
                         end_factor=end_factor, begin=begin, end=end + 1,
                         last_step=last_step, by_epoch=by_epoch, verbose=verbose)

    def factor(self, step: int) -> float:
        """The multiplier of the base value at ``step`` steps after ``begin``."""
        if step >= self.num:
            return self.end_factor
        divisor = self.num - 1 if self.endpoint else self.num
        if divisor == 0:
            return self.start_factor
        return self.start_factor + (self.end_factor - self.start_factor) * step / divisor

    def _get_value(self):
        scale = self.factor(self.last_step)
        return [base * scale for base in self.base_values]


@PARAM_SCHEDULERS.register_module()
class LinspaceLR(LRSchedulerMixin, LinspaceParamScheduler):
    """:class:`LinspaceParamScheduler` on the learning rate (DINO's warm-up by default)."""
