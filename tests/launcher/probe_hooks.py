"""Test-only hooks, imported by the shrunk recipes through ``custom_imports``."""
import hashlib
import json
import os
import os.path as osp
import signal
import time

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model


@HOOKS.register_module()
class SignalGroupHook(Hook):
    """Rank 0 sends ``signame`` to its whole process group (torchrun, every rank, the loader
    workers: what slurm's scancel reaches) after iteration ``after_iter`` (1-based), then
    waits ``settle`` seconds so every process has it before the next agreement."""

    def __init__(self, after_iter: int, signame: str = 'SIGTERM', settle: float = 2.0):
        self.after_iter, self.signame, self.settle = after_iter, signame, settle

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.after_iter and dist.get_rank() == 0:
            os.killpg(os.getpgid(0), getattr(signal, self.signame))
            time.sleep(self.settle)


@HOOKS.register_module()
class RecordRankHook(Hook):
    """Each rank writes ``probe_rank<r>.json``: its seed, its pid, a digest of the student
    and teacher weights when training starts (after the wrapper broadcast them) and of a
    torch random draw made there (differs across ranks iff their RNG streams differ)."""

    priority = 'VERY_LOW'

    def before_train(self, runner):
        model = get_ori_model(runner.model)
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if hasattr(tensor, 'full_tensor'):  # FSDP2 shard: the whole parameter
                tensor = tensor.full_tensor()
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        state = torch.get_rng_state()
        draw = torch.rand(4).tolist()
        torch.set_rng_state(state)  # leave the run's stream untouched
        record = dict(rank=dist.get_rank(), pid=os.getpid(), seed=runner.seed,
                      torch_seed=torch.initial_seed(), weights=digest.hexdigest(), draw=draw)
        with open(osp.join(runner.work_dir, f'probe_rank{dist.get_rank()}.json'), 'w') as f:
            json.dump(record, f)


@HOOKS.register_module()
class KillRankHook(Hook):
    """Rank ``rank`` kills itself with SIGKILL (``kill -9``) after iteration ``after_iter``."""

    def __init__(self, rank: int, after_iter: int):
        self.rank, self.after_iter = rank, after_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.after_iter and dist.get_rank() == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
