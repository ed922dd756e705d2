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
(the epoch checkpoint). A second Ctrl-C, or a signal after training ended with an exception
(which skips ``after_train``), goes to the previous handler: Ctrl-C raises
``KeyboardInterrupt``, SIGTERM terminates. A repeated SIGTERM while the stop is pending is
ignored: slurm signals every process of a job step and torchrun forwards the signal to its
workers as well, so a worker under torchrun gets it twice (the scheduler's SIGKILL still
follows its grace time). Data-loader workers ignore the signals (the trainer stops
them). In distributed runs the ranks agree on the stop with one small all-reduce (MAX of
the signal numbers, on the host over gloo whatever the training backend) every
``check_interval`` iterations and at every epoch end, save together (every rank runs the
hooks' ``before_save_all_ranks``, rank 0 writes) and wait for the file before any of them
exits: a rank that exits first makes torchrun end the others, the writer included.
"""
import atexit
import gc
import multiprocessing
import multiprocessing.util  # noqa: F401  (registers its exit handler before ours)
import os
import os.path as osp
import signal
import threading
from typing import Optional

from mmengine import dist
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import BaseLoop, EpochBasedTrainLoop
from mmpretrain.registry import HOOKS

from ...models.losses.numerics import host_checks_are_free
from ..atomic_file_backend import atomic_write_bytes
from .all_ranks import barrier, before_save_all_ranks, global_max, host_group

MID_EPOCH_KEY = 'batches_done_in_epoch'


class TrainingInterrupted(SystemExit):
    """Raised after the interruption checkpoint is written (exit status 128 + signal)."""


class _WorkersIgnoreSignals:
    """A data loader's ``worker_init_fn`` that first makes the worker ignore the signals: a
    terminal's Ctrl-C and slurm's scancel signal the whole process group, and torch's workers
    die on SIGTERM (a C handler), which would kill the run before the iteration boundary.
    The trainer shuts its workers down itself."""

    def __init__(self, init_fn, signals):
        self.init_fn, self.signals = init_fn, list(signals)

    def __call__(self, worker_id: int) -> None:
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def stop_loader_workers() -> None:
    """Stop this process's data-loader workers: torch's own shutdown (sentinel, join with a
    timeout), then SIGKILL for any still alive. Registered with ``atexit`` (runs before
    multiprocessing's exit handler, which would SIGTERM and join them forever: they ignore
    SIGTERM, see ``_WorkersIgnoreSignals``)."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
    for obj in gc.get_objects():  # a running iterator is only referenced by the loop
        if type(obj) is _MultiProcessingDataLoaderIter:  # (isinstance warns on some objects)
            obj._shutdown_workers()
            for worker in getattr(obj, '_workers', []):
                if worker.is_alive():
                    os.kill(worker.pid, signal.SIGKILL)
    # workers whose iterator is already gone (torch's terminate() was ignored): without this,
    # multiprocessing's exit handler would join them forever. It would terminate every daemon
    # child anyway; SIGKILL is that, for children that ignore SIGTERM.
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children:  # torch's SIGCHLD handler would raise for a worker killed here
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=5)


atexit.register(stop_loader_workers)


def _inside_train_loop(frame) -> bool:
    """Whether the interrupted code runs inside an mmengine train loop's ``run``."""
    while frame is not None:
        if frame.f_code.co_name == 'run' and isinstance(frame.f_locals.get('self'), BaseLoop):
            return True
        frame = frame.f_back
    return False


@HOOKS.register_module()
class StopOnSignalHook(Hook):
    """Save at the next iteration boundary after SIGTERM/SIGINT and exit.

    Args:
        signals: the signals that stop training.
        check_interval: in a distributed run, iterations between two agreements of the ranks
            on a stop (one small all-reduce each, over a gloo group on the host, so it never
            waits for the device); None: every iteration on a CPU, every 10 on
            accelerators. A signal is served at most that many iterations late. A single
            process reads its own flag every iteration.
    """

    priority = 'LOWEST'  # after every other after_train_iter: the state is complete

    def __init__(self, signals=('SIGTERM', 'SIGINT'), check_interval: Optional[int] = None):
        if check_interval is not None and (not isinstance(check_interval, int)
                                           or check_interval < 1):
            raise ValueError(f'StopOnSignalHook: check_interval must be an integer >= 1, got '
                             f'{check_interval!r}')
        self.check_interval = check_interval
        self.signals = [getattr(signal, s) if isinstance(s, str) else s for s in signals]
        self._received: Optional[int] = None
        self._previous = {}
        self._epoch_start_iter = 0
        self._resumed_batches = 0
        self._owner_pid = None
        self._host_group = False  # not created yet (None: the default group)

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked data-loader worker: the trainer stops it
        if self._received == signum == signal.SIGTERM:
            return  # the same pre-emption, delivered again (slurm and torchrun both send it)
        if self._received is not None or not _inside_train_loop(frame):
            # a second signal, or training already ended without after_train (an exception):
            # hand the signal to the previous handler (Ctrl-C: KeyboardInterrupt)
            self._restore_handlers()
            signal.raise_signal(signum)
            return
        self._received = signum

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def before_train(self, runner) -> None:
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('StopOnSignalHook: not in the main thread, signals are not '
                                  'handled')
            return
        self._owner_pid = os.getpid()
        if self.check_interval is None:
            on_cpu = all(host_checks_are_free(p) for p in runner.model.parameters())
            self.check_interval = 1 if on_cpu else 10
        if self._host_group is False:  # once per hook, on every rank
            self._host_group = host_group()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        loader = runner.train_dataloader
        if getattr(loader, 'num_workers', 0) and not isinstance(loader.worker_init_fn,
                                                                _WorkersIgnoreSignals):
            loader.worker_init_fn = _WorkersIgnoreSignals(loader.worker_init_fn, self.signals)

    def after_train(self, runner) -> None:
        self._restore_handlers()
        # Stop persistent workers now: they ignore SIGTERM, and torch's clean-up of a
        # garbage-collected Runner cannot stop them (its stop message goes to a queue the
        # same collection already closed), so each finished Runner left an idle worker.
        loader = runner.train_dataloader
        iterator = getattr(loader, '_iterator', None)
        if iterator is not None and hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()
            loader._iterator = None

    def _stop_requested(self) -> int:
        # the local flag without a process group
        return global_max(self._received or 0, group=self._host_group or None)

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
        if dist.get_world_size() > 1 and not self.every_n_train_iters(runner,
                                                                       self.check_interval):
            return
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
        # (re)written with the interruption in its meta, also when the checkpoint hook has
        # just saved this epoch
        self._save_and_exit(runner, signum, f'epoch_{runner.epoch + 1}.pth',
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
        iters_done = meta['iter']
        meta['interrupted_by'] = signal.Signals(signum).name
        before_save_all_ranks(runner)  # every rank: mmengine's Runner saves on rank 0 only
        # by_epoch picks the (epoch, iter) that FlexibleRunner writes over ours (Runner keeps
        # ours): the finished epoch's, or the current epoch's with the iteration just done
        runner.save_checkpoint(
            out_dir, filename, meta=meta, backend_args=backend_args,
            by_epoch=filename.startswith('epoch_'),
            save_optimizer=getattr(hook, 'save_optimizer', True),
            save_param_scheduler=getattr(hook, 'save_param_scheduler', True))
        path = osp.join(out_dir, filename)
        if dist.is_main_process():
            atomic_write_bytes(path.encode(), osp.join(runner.work_dir, 'last_checkpoint'))
        barrier()  # no rank leaves before the file and its pointer are written
        self._exit(runner, signum, path, iters_done)

    def _exit(self, runner, signum: int, path: str, iters_done: int) -> None:
        self._restore_handlers()
        stop_loader_workers()
        runner.logger.warning(
            f'{signal.Signals(signum).name} received: stopped after iteration {iters_done} '
            f'and saved {path}; continue with tools/train.py CONFIG --resume')
        raise TrainingInterrupted(128 + signum)
