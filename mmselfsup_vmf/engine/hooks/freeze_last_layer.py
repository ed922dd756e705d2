"""DINO's last-layer freezing: drop the student's prototype-layer gradients for N epochs."""
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from ...engine.optimizers.distill_optim_wrapper import GradEditMixin


@HOOKS.register_module()
class FreezeLastLayerHook(Hook):
    """Cancels gradients of student parameters whose name contains ``name_pattern``.

    During epochs ``[0, epochs)`` those gradients are set to None after clipping and before
    the optimiser step (DINO's ``cancel_gradients_last_layer``; covers g and v of the
    weight-normalised layer and iBOT's ``last_layer2``). Needs ``DistillOptimWrapper`` or
    ``AmpDistillOptimWrapper``. The EMA teacher is never touched.
    """

    priority = 'NORMAL'

    def __init__(self, epochs: int = 1, name_pattern: str = 'last_layer'):
        if epochs < 0:
            raise ValueError(f'FreezeLastLayerHook epochs must be >= 0, got {epochs}')
        self.epochs = epochs
        self.name_pattern = name_pattern
        self.params = []

    def before_train(self, runner) -> None:
        if not isinstance(runner.optim_wrapper, GradEditMixin):
            raise TypeError(
                'FreezeLastLayerHook needs optim_wrapper.type=DistillOptimWrapper or '
                f'AmpDistillOptimWrapper, got {type(runner.optim_wrapper).__name__}')
        model = get_ori_model(runner.model)
        self.params = [p for n, p in model.named_parameters()
                       if self.name_pattern in n and not n.startswith('teacher.')]
        if self.epochs and not self.params:
            runner.logger.warning(f'FreezeLastLayerHook: no student parameter name contains '
                                  f'{self.name_pattern!r}; nothing is frozen')

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        runner.optim_wrapper.cancel_grads_of = (
            self.params if runner.epoch < self.epochs else [])
