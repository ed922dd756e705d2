"""Stop on SIGTERM / SIGINT (slurm pre-emption, Ctrl-C) at the next iteration boundary, with
a checkpoint that resumes exactly.

mmengine's loops only stop between epochs, and an epoch of a real run lasts hours, longer
than a scheduler's grace period. At the first iteration boundary after the signal this hook
saves ``iter_<N>.pth`` (atomically, then ``last_checkpoint`` points to it) with
``meta['batches_done_in_epoch']`` and exits with status 128 + signal number. On resume it
makes the sampler (``EpochIndexSampler.skip_once``) skip the batches of that epoch already
trained; ``RandomStateHook`` restores the RNG state at the first resumed iteration. Together
with ``SeededDataset`` the resumed run continues bitwise as the uninterrupted one.

A signal that arrives at the last iteration of an epoch is served after the epoch's hooks
(the epoch checkpoint). A second signal stops at once, without a checkpoint. In distributed
runs the ranks agree on the stop with one small all-reduce per iteration.
"""
import os.path as osp
import signal
import threading
from typing import Optional

import torch
from mmengine import dist
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import EpochBasedTrainLoop
from mmpretrain.registry import HOOKS

from ..atomic_file_backend import atomic_write_bytes

MID_EPOCH_KEY = 'batches_done_in_epoch'


class TrainingInterrupted(SystemExit):
    """Raised after the interruption checkpoint is written (exit status 128 + signal)."""


@HOOKS.register_module()
class StopOnSignalHook(Hook):
    """Save at the next iteration boundary after SIGTERM/SIGINT and exit."""

    priority = 'LOWEST'  # after every other after_train_iter: the state is complete

    def __init__(self, signals=('SIGTERM', 'SIGINT')):
        self.signals = [getattr(signal, s) if isinstance(s, str) else s for s in signals]
        self._received: Optional[int] = None
        self._previous = {}
        self._epoch_start_iter = 0
        self._resumed_batches = 0

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        if self._received is not None:  # second signal: stop now, no checkpoint
            self._restore_handlers()
            signal.raise_signal(signum)
            return
        self._received = signum

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def before_train(self, runner) -> None:
        # installed before the data-loader workers fork, so they inherit this handler and
        # keep serving batches instead of dying on the terminal's / scheduler's signal
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('StopOnSignalHook: not in the main thread, signals are not '
                                  'handled')
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def after_train(self, runner) -> None:
        self._restore_handlers()

    def _stop_requested(self) -> int:
        flag = torch.tensor([self._received or 0])
        dist.all_reduce(flag, op='max')  # no-op without a process group
        return int(flag.item())

    # ------------------------------------------------------------------ resume
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        batches = (checkpoint.get('meta') or {}).get(MID_EPOCH_KEY)
        if not batches or not getattr(runner, '_resume', False):
            return
        loader = runner.train_dataloader
        if not hasattr(loader.sampler, 'skip_once'):
            raise ValueError(
                f'the checkpoint was saved after batch {batches} of an epoch; resuming it '
                f'exactly needs train_dataloader.sampler=dict(type=\'EpochIndexSampler\'), '
                f'not {type(loader.sampler).__name__}')
        loader.sampler.skip_once(batches * loader.batch_size)
        self._resumed_batches = batches

    def before_train_epoch(self, runner) -> None:
        self._epoch_start_iter = runner.iter - self._resumed_batches
        self._resumed_batches = 0

    # ------------------------------------------------------------------ stopping
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        signum = self._stop_requested()
        if not signum:
            return
        epoch_based = isinstance(runner.train_loop, EpochBasedTrainLoop)
        done = runner.iter + 1 - self._epoch_start_iter
        if epoch_based and done >= len(runner.train_dataloader):
            return  # the epoch's end is the boundary: after_train_epoch saves
        meta = dict(epoch=runner.epoch, iter=runner.iter + 1)
        if epoch_based:
            meta[MID_EPOCH_KEY] = done
        self._save_and_exit(runner, signum, f'iter_{runner.iter + 1}.pth', meta)

    def after_train_epoch(self, runner) -> None:
        signum = self._stop_requested()
        if not signum:
            return
        hook = self._checkpoint_hook(runner)
        name = f'epoch_{runner.epoch + 1}.pth'
        if hook is not None and hook.last_ckpt and osp.basename(hook.last_ckpt) == name:
            self._exit(runner, signum, hook.last_ckpt, runner.iter)  # the hook saved it
        self._save_and_exit(runner, signum, name,
                            dict(epoch=runner.epoch + 1, iter=runner.iter))

    @staticmethod
    def _checkpoint_hook(runner) -> Optional[CheckpointHook]:
        return next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

    def _save_and_exit(self, runner, signum: int, filename: str, meta: dict) -> None:
        hook = self._checkpoint_hook(runner)
        out_dir = hook.out_dir if hook is not None else runner.work_dir
        backend_args = hook.backend_args if hook is not None else None
        if hook is None or backend_args is None or hook.file_client_args is not None:
            backend_args = dict(backend='atomic_local')
        meta['interrupted_by'] = signal.Signals(signum).name
        runner.save_checkpoint(
            out_dir, filename, meta=meta, backend_args=backend_args,
            save_optimizer=getattr(hook, 'save_optimizer', True),
            save_param_scheduler=getattr(hook, 'save_param_scheduler', True))
        path = osp.join(out_dir, filename)
        if dist.is_main_process():
            atomic_write_bytes(path.encode(), osp.join(runner.work_dir, 'last_checkpoint'))
        self._exit(runner, signum, path, meta['iter'])

    def _exit(self, runner, signum: int, path: str, iters_done: int) -> None:
        self._restore_handlers()
        runner.logger.warning(
            f'{signal.Signals(signum).name} received: stopped after iteration {iters_done} '
            f'and saved {path}; continue with tools/train.py CONFIG --resume')
        raise TrainingInterrupted(128 + signum)
