"""mmengine's ``CheckpointHook`` made safe against crashes during and between saves.

* Writes are atomic (``AtomicLocalBackend``: temporary file, fsync, ``os.replace``), and the
  ``last_checkpoint`` pointer is written by the parent only after the save returned.
* Rotation (``max_keep_ckpts``) and the replacement of the best checkpoint delete the old
  files only after the new checkpoint and the pointer are complete: the parent's removals are
  recorded during the save and replayed after it (mmengine removes first, so during every
  save only ``max_keep_ckpts - 1`` good checkpoints exist, none with ``max_keep_ckpts=1``).
* ``--resume`` without a path (auto-resume) skips an unreadable latest checkpoint (truncated,
  corrupt, or a pointer to a missing file) with a warning and resumes from the newest
  readable one; an explicitly named unreadable checkpoint is a one-line error that names the
  newest readable alternative.
* Every rank runs the hooks' ``before_save_all_ranks`` (gathers and checks that need all
  ranks, see ``all_ranks.py``) before mmengine's rank-0-only ``Runner.save_checkpoint``.
* ``trust_checkpoint = True`` in the config allows unrestricted unpickling for this run
  (see ``mmselfsup_vmf/utils/safe_load.py``).
"""
import contextlib
import os
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmpretrain.registry import HOOKS

from ...utils.safe_load import (
    UnreadableCheckpointError,
    load_checkpoint_file,
    set_trust,
    trust_enabled,
)
from ..atomic_file_backend import is_stale_temporary
from .all_ranks import before_save_all_ranks


class _DeferredRemovals:
    """A file backend whose ``remove``/``rmtree`` are recorded, everything else forwarded."""

    def __init__(self, backend):
        self._backend = backend
        self.pending: List[Tuple[str, str]] = []

    def remove(self, path) -> None:
        self.pending.append(('remove', path))

    def rmtree(self, path) -> None:
        self.pending.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def checkpoint_iteration(path: str) -> Optional[int]:
    """``meta['iter']`` of a readable checkpoint (tensors memory-mapped, not read); None for
    a missing, truncated or corrupt file."""
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu', mmap=True)
    except (UnreadableCheckpointError, FileNotFoundError):
        return None
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    return int(meta.get('iter', 0)) if isinstance(meta, dict) else 0


def newest_readable_checkpoint(directory: str, exclude: str = None) -> Optional[str]:
    """The readable ``*.pth`` in ``directory`` with the largest ``meta['iter']``."""
    if not osp.isdir(directory):
        return None
    best, best_iter = None, -1
    for name in sorted(os.listdir(directory)):
        path = osp.join(directory, name)
        if not name.endswith('.pth') or not osp.isfile(path) or (
                exclude and osp.abspath(path) == osp.abspath(exclude)):
            continue
        it = checkpoint_iteration(path)
        if it is not None and it > best_iter:
            best, best_iter = path, it
    return best


@HOOKS.register_module()
class FaultTolerantCheckpointHook(CheckpointHook):
    """Drop-in ``CheckpointHook`` (same arguments): atomic saves, removal after the new
    checkpoint is complete, resume that skips unreadable checkpoints."""

    def __init__(self, *args, backend_args: Optional[dict] = None, **kwargs):
        out_dir = kwargs.get('out_dir')
        local = out_dir is None or '://' not in str(out_dir)
        if backend_args is None and kwargs.get('file_client_args') is None and local:
            backend_args = dict(backend='atomic_local')
        super().__init__(*args, backend_args=backend_args, **kwargs)
        self._trust_set_here = False

    # ------------------------------------------------------------------ saving
    @contextlib.contextmanager
    def _removals_after_save(self):
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            yield
        finally:
            self.file_backend = backend
        for method, path in deferred.pending:  # reached only when the save succeeded
            getattr(backend, method)(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        before_save_all_ranks(runner)  # reached by every rank (mmengine's save: rank 0 only)
        with self._removals_after_save():
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if self.save_best is not None:  # mmengine returns early without it (no save)
            before_save_all_ranks(runner)
        with self._removals_after_save():
            super()._save_best_checkpoint(runner, metrics)

    # ------------------------------------------------------------------ loading
    def before_run(self, runner) -> None:
        if runner.cfg.get('trust_checkpoint') and not trust_enabled():
            set_trust(True)
            self._trust_set_here = True
        if getattr(runner, '_resume', False):
            self._remove_stale_temporaries(runner.work_dir)
            self._choose_resume_checkpoint(runner)

    def after_run(self, runner) -> None:
        if self._trust_set_here:
            set_trust(False)

    def _choose_resume_checkpoint(self, runner) -> None:
        explicit = runner._load_from
        if explicit is not None:
            if '://' in str(explicit):
                return
            try:
                load_checkpoint_file(explicit, map_location='cpu', mmap=True)
                return
            except (UnreadableCheckpointError, FileNotFoundError) as e:
                alternative = newest_readable_checkpoint(osp.dirname(explicit) or '.',
                                                         exclude=explicit)
                hint = (f'; the newest readable checkpoint there is {alternative}'
                        if alternative else '')
                raise UnreadableCheckpointError(f'cannot resume: {e}{hint}') from None
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        latest = None
        if osp.isfile(pointer):
            with open(pointer) as f:
                latest = f.read().strip() or None
        if latest is not None and checkpoint_iteration(latest) is not None:
            runner._load_from = latest
            return
        chosen = newest_readable_checkpoint(runner.work_dir, exclude=latest)
        if chosen is None:
            if latest is not None:
                raise UnreadableCheckpointError(
                    f'cannot resume: the latest checkpoint {latest} is not readable and '
                    f'{runner.work_dir} holds no other readable checkpoint')
            return  # nothing to resume: mmengine trains from scratch, as without the hook
        runner.logger.warning(
            f'the latest checkpoint {latest} is not readable; resuming from the newest '
            f'readable one: {chosen}' if latest else
            f'no last_checkpoint pointer in {runner.work_dir}; resuming from the newest '
            f'readable checkpoint: {chosen}')
        runner._load_from = chosen

    @staticmethod
    def _remove_stale_temporaries(directory: str) -> None:
        """Partial files of a writer killed before its rename (never a checkpoint); the
        resumed run owns its work dir."""
        if not is_main_process() or not osp.isdir(directory):
            return
        for name in os.listdir(directory):
            if is_stale_temporary(name):
                with contextlib.suppress(OSError):
                    os.remove(osp.join(directory, name))
