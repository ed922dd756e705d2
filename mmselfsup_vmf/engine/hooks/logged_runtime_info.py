"""mmengine's RuntimeInfoHook with the loss terms read only on the iterations that log them.

``RuntimeInfoHook.after_train_iter`` puts every output of ``train_step`` into the message hub,
which reads each device tensor on the host (``.item()``): on a GPU the host then waits for the
step at every iteration. Here the values stay on the device and are read in one copy on the
logging iterations (LoggerHook's condition: every ``interval`` iterations of an epoch and at
its end), at the end of training and before a checkpoint is saved; then they enter the message
hub in their original order, so the logged (windowed) values are the same. Where reads are
free (a CPU) it is mmengine's hook unchanged.
"""
from typing import Dict, List, Optional

import torch
from mmengine.hooks import LoggerHook, RuntimeInfoHook
from mmpretrain.registry import HOOKS

from ...models.losses.numerics import host_checks_are_free


def pop_pending_scalars(optim_wrapper) -> Dict[str, torch.Tensor]:
    """Scalars the optimiser wrapper left on the device this step (e.g. the gradient norm)."""
    wrappers = getattr(optim_wrapper, 'values', lambda: [optim_wrapper])()
    pending = {}
    for wrapper in wrappers:
        pending.update(getattr(wrapper, 'pending_scalars', {}))
        if hasattr(wrapper, 'pending_scalars'):
            wrapper.pending_scalars = {}
    return pending


@HOOKS.register_module()
class LoggedRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` whose per-iteration device reads wait for the logging iteration."""

    def __init__(self):
        super().__init__()
        self.interval = 1
        self._pending: List[Dict[str, torch.Tensor]] = []

    def before_train(self, runner) -> None:
        super().before_train(runner)
        loggers = [h for h in runner.hooks if isinstance(h, LoggerHook)]
        self.interval = loggers[0].interval if loggers else 1
        self._pending: List[Dict[str, torch.Tensor]] = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        values = dict(outputs or {})
        values.update({k.split('/', 1)[-1]: v
                       for k, v in pop_pending_scalars(runner.optim_wrapper).items()})
        tensors = [v for v in values.values() if isinstance(v, torch.Tensor)]
        if not self._pending and all(host_checks_are_free(t) for t in tensors):
            return super().after_train_iter(runner, batch_idx, data_batch, values)
        self._pending.append({k: v.detach() if isinstance(v, torch.Tensor) else v
                              for k, v in values.items()})
        if (self.every_n_inner_iters(batch_idx, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            self.flush(runner)

    def flush(self, runner) -> None:
        """All pending values to the message hub, read in one device-to-host copy."""
        pending, self._pending = self._pending, []
        tensors = [v for it in pending for v in it.values() if isinstance(v, torch.Tensor)]
        if tensors:
            device = tensors[0].device
            host = iter(torch.stack([t.reshape(()).to(device, torch.float64)
                                     for t in tensors]).tolist())
        for it in pending:
            for key, value in it.items():
                value = next(host) if isinstance(value, torch.Tensor) else value
                runner.message_hub.update_scalar(f'train/{key}', value)

    def after_train_epoch(self, runner) -> None:
        self.flush(runner)
        super().after_train_epoch(runner)

    def after_train(self, runner) -> None:
        self.flush(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._pending:
            self.flush(runner)
            if 'message_hub' in checkpoint:
                checkpoint['message_hub'] = runner.message_hub.state_dict()
