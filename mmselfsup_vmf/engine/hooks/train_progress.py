"""Tells the model where training is, so that it evaluates its schedules without global state."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class TrainProgressHook(Hook):
    """Before every training iteration, call ``model.set_train_progress(epoch, iteration,
    max_iters)`` (mmdet's ``SetEpochInfoHook`` pattern).

    The self-distillation algorithms evaluate the teacher temperature, the EMA momentum and
    the mask schedule from these values and pass them to their losses as arguments. A model
    without ``set_train_progress`` is left alone, so the hook can stay in a shared base config.
    It is in ``default_hooks`` of ``configs/_base_/default_runtime.py``.
    """

    priority = 'VERY_HIGH'

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if hasattr(model, 'set_train_progress'):
            model.set_train_progress(runner.epoch, runner.iter, runner.max_iters)
