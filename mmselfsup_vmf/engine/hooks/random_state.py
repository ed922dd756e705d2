"""Save the RNG states in checkpoints so a resumed run continues bitwise as the straight one."""
import random

import numpy as np
import torch
from mmengine import dist
from mmengine.hooks import CheckpointHook, Hook
from mmpretrain.registry import HOOKS

from ...models.utils.dist import is_distributed
from .all_ranks import gather
from .fault_tolerant_checkpoint import FaultTolerantCheckpointHook
from .stop_on_signal import MID_EPOCH_KEY


def get_random_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_random_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Stores every rank's python/numpy/torch RNG state in the checkpoint (``random_state``)
    and, on resume, restores it just before the next training epoch starts (for a checkpoint
    saved within an epoch: before the next iteration) — the point where a straight run would
    continue with that state. mmengine itself only re-seeds on resume,
    so drop-path and other in-model randomness would otherwise differ after a resume.
    Augmentations are made independent of process history by ``SeededDataset``.

    The states are gathered on every rank in ``before_save_all_ranks`` (called by this
    package's save paths just before the save), not in ``before_save_checkpoint``, which
    mmengine's Runner runs on rank 0 only.
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending = None
        self._at_first_iter = False
        self._gathered = None

    def before_train(self, runner) -> None:
        plain = [type(h).__name__ for h in runner.hooks if isinstance(h, CheckpointHook)
                 and not isinstance(h, FaultTolerantCheckpointHook)]
        if plain and is_distributed():  # the same config on every rank: all raise alike
            raise ValueError(
                f'RandomStateHook in a distributed run needs default_hooks.checkpoint='
                f"dict(type='FaultTolerantCheckpointHook', ...), not {plain[0]}: the RNG states "
                'of all ranks are gathered before a save, which mmengine\'s CheckpointHook '
                'makes on rank 0 only')

    def before_save_all_ranks(self, runner) -> None:
        self._gathered = gather(get_random_state())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        states, self._gathered = self._gathered, None
        if states is None:  # a save outside this package's save paths
            states = [get_random_state()]
            if is_distributed():
                runner.logger.warning(
                    'RandomStateHook: this checkpoint holds the RNG state of rank 0 only (it '
                    'was not saved through FaultTolerantCheckpointHook or StopOnSignalHook); '
                    'a resume from it is not bitwise on the other ranks')
        checkpoint['random_state'] = states

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get('random_state')
        if states and getattr(runner, '_resume', False):
            rank = dist.get_rank()
            self._pending = states[rank] if rank < len(states) else states[0]
            # saved between two iterations of an epoch (StopOnSignalHook): the straight run
            # built that epoch's data iterator (which draws a base seed) before the save
            self._at_first_iter = bool((checkpoint.get('meta') or {}).get(MID_EPOCH_KEY))

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self._pending is not None and self._at_first_iter:
            set_random_state(self._pending)
            self._pending = None

    def before_train_epoch(self, runner) -> None:
        if self._pending is None or self._at_first_iter:
            return
        loader = runner.train_dataloader
        if (getattr(loader, 'persistent_workers', False) and loader.num_workers > 0
                and getattr(loader, '_iterator', 0) is None):
            # A straight run drew the workers' base seed from the global RNG when it first
            # built its persistent iterator, long before this point; build it now so that
            # draw does not consume the state we are about to restore.
            loader._iterator = loader._get_iterator()
        set_random_state(self._pending)
        self._pending = None
