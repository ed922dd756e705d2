"""Stop training at the first non-finite loss term or gradient; never save non-finite weights.

Per step the hook only queues device work: the loss terms (``outputs`` keys containing
'loss') and, from a ``torch.optim.Optimizer`` step pre-hook, one finiteness flag per
parameter gradient are folded into an on-device record of the *first* bad iteration. The
record is read (one device->host copy) every ``check_interval`` iterations, at the end of
every epoch, before every checkpoint save and, on a CPU, every iteration (a read is free
there). So on a GPU the error can come up to ``check_interval`` iterations late but still
names the first bad iteration, and no checkpoint is written in between.

With a loss scaler (fp16 ``AmpOptimWrapper``) a non-finite step is skipped by the scaler and
is not an error; more than ``max_skipped_steps`` consecutive skipped steps are (the scale
collapsed). ``AmpDistillOptimWrapper`` gives each step's overflow flag as a device tensor, so
skips are counted on the device and read with the record; this holds for a fused optimiser too,
whose step always runs and skips its update on the device. For other loss-scaled wrappers a
step is taken as skipped when the optimiser did not run.

In a distributed run every read is a decision of all ranks: the ranks' first bad iterations
are all-reduced (MIN) at the same points (the schedule above is the same on every rank), and
when one rank has one, every rank raises the same message, that of the rank with the earliest
bad iteration. The checks before a save run on every rank (``before_save_all_ranks``).
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.hooks import CheckpointHook, Hook, LoggerHook
from mmengine.optim import OptimWrapperDict
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from ...models.losses.numerics import host_checks_are_free
from ...models.utils.dist import finite_flags, is_distributed, local_shard
from .all_ranks import gather, global_max

DATA_BATCH = Optional[dict]


def first_names(names: Sequence[str], limit: int = 3) -> str:
    """'a, b, c and 4 more' — a short list for a one-line message."""
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def nonfinite_tensors(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or an infinity."""
    floats = [(k, v) for k, v in state_dict.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(v).all() for _, v in floats]).tolist()
    return [k for (k, _), ok in zip(floats, finite) if not ok]


def last_checkpoint(runner) -> str:
    """The checkpoint named by CheckpointHook's ``last_checkpoint`` file, or 'none'."""
    for hook in runner.hooks:
        out_dir = getattr(hook, 'out_dir', None) if isinstance(hook, CheckpointHook) else None
        if isinstance(out_dir, str) and osp.isfile(osp.join(out_dir, 'last_checkpoint')):
            with open(osp.join(out_dir, 'last_checkpoint')) as f:
                return f.read().strip() or 'none'
    return 'none'


@HOOKS.register_module()
class DivergenceGuardHook(Hook):
    """Raise ``FloatingPointError`` naming the iteration and the term when training diverges.

    Args:
        check_interval: iterations between two reads of the on-device record when reads
            are not free (accelerators); None: the LoggerHook's interval.
        read_every_iter: read the record every iteration; None: only on a CPU.
        max_skipped_steps: consecutive steps skipped by an enabled loss scaler that are
            tolerated (fp16 dynamic loss scaling skips a step on overflow and halves its
            scale); one more is an error.
    """

    priority = 80  # after LoggerHook (the bad iteration is logged), before CheckpointHook

    def __init__(self, check_interval: Optional[int] = None,
                 read_every_iter: Optional[bool] = None, max_skipped_steps: int = 20):
        for key, value in (('check_interval', check_interval),
                           ('max_skipped_steps', max_skipped_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f'DivergenceGuardHook: {key} must be an integer >= 1, '
                                 f'got {value!r}')
        self.check_interval = check_interval
        self.read_every_iter = read_every_iter
        self.max_skipped_steps = max_skipped_steps
        self._handles: list = []
        self._reset_record([])

    # ------------------------------------------------------------------ on-device record
    def _reset_record(self, names: List[str]) -> None:
        self._names = names                       # loss terms, then 'gradient of <param>'
        self._first_bad: Optional[torch.Tensor] = None   # int64 scalar, -1 = none yet
        self._bad_mask: Optional[torch.Tensor] = None    # bool (len(names),)
        self._bad_values: Optional[torch.Tensor] = None  # float (len(names),)
        self._grad_finite: Optional[torch.Tensor] = None  # set by the optimizer pre-hook

    def _reset_skip_record(self) -> None:
        self._skips_in_a_row: Optional[torch.Tensor] = None  # int64 scalar on the device
        self._first_collapse: Optional[torch.Tensor] = None  # iteration, -1 = none yet

    def _optimizers(self, runner) -> list:
        wrapper = runner.optim_wrapper
        wrappers = wrapper.values() if isinstance(wrapper, OptimWrapperDict) else [wrapper]
        return [(w, w.optimizer) for w in wrappers]

    def before_train(self, runner) -> None:
        self._param_names = {}
        for name, p in runner.model.named_parameters():
            self._param_names.setdefault(p, name)
        self._params = [p for _, opt in self._optimizers(runner)
                        for g in opt.param_groups for p in g['params']]
        self.after_train(runner)  # a run that raised left its pre-hooks registered
        self._handles = [opt.register_step_pre_hook(self._record_grads)
                         for _, opt in self._optimizers(runner)]
        if self.check_interval is None:
            loggers = [h for h in runner.hooks if isinstance(h, LoggerHook)]
            self.check_interval = loggers[0].interval if loggers else 50
        if self.read_every_iter is None:
            self.read_every_iter = (host_checks_are_free(self._params[0]) if self._params
                                    else True)
        checkpoint = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
        self._ckpt_iter_interval = (checkpoint[0].interval if checkpoint
                                    and not checkpoint[0].by_epoch else None)
        self._skipped_in_a_row = 0
        self._stepped = False
        self._reset_skip_record()

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record_grads(self, optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: one finiteness flag per parameter, on the device."""
        self._stepped = True
        params = [p for g in optimizer.param_groups for p in g['params']]
        if not params:
            return
        flags = finite_flags([p.grad for p in params], params[0].device)
        self._grad_finite = flags if self._grad_finite is None else torch.cat(
            [self._grad_finite, flags])

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        self._stepped = False
        self._grad_finite = None

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        terms = {k: v for k, v in (outputs or {}).items()
                 if 'loss' in k and isinstance(v, torch.Tensor)}
        skipped = self._skipped_step(runner)
        if skipped is not True and terms:
            self._fold(runner, terms, skipped)
        if (self.read_every_iter or self.every_n_train_iters(runner, self.check_interval)
                or (self._ckpt_iter_interval
                    and self.every_n_train_iters(runner, self._ckpt_iter_interval))
                or self.end_of_epoch(runner.train_dataloader, batch_idx)
                or self.is_last_train_iter(runner)):
            self.check(runner)

    def _skipped_step(self, runner):
        """Whether an enabled loss scaler skipped this iteration's step: a device bool
        tensor (``AmpDistillOptimWrapper``), a bool (other wrappers: the optimiser did not
        run), or None (no loss-scaled step this iteration)."""
        attempted = [w for w, _ in self._optimizers(runner)
                     if w.should_update() and getattr(getattr(w, 'loss_scaler', None),
                                                      'is_enabled', lambda: False)()]
        flags = [w.overflowed for w in attempted if getattr(w, 'overflowed', None) is not None]
        if flags:
            skipped = torch.stack(flags).any()
            self._count_on_device(runner, skipped)
            return skipped
        if not attempted or self._stepped:
            self._skipped_in_a_row = 0
            return None
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row > self.max_skipped_steps:
            raise FloatingPointError(self._collapse_message(attempted[0], runner.iter))
        return True

    def _count_on_device(self, runner, skipped: torch.Tensor) -> None:
        """Consecutive skipped steps; the first iteration past the limit (no sync)."""
        if self._skips_in_a_row is None:
            self._skips_in_a_row = torch.zeros((), dtype=torch.long, device=skipped.device)
            self._first_collapse = torch.full((), -1, dtype=torch.long, device=skipped.device)
        self._skips_in_a_row = torch.where(skipped, self._skips_in_a_row + 1, 0)
        new = (self._skips_in_a_row > self.max_skipped_steps) & (self._first_collapse < 0)
        self._first_collapse = torch.where(new, self._first_collapse.new_full((), runner.iter),
                                           self._first_collapse)

    def _collapse_message(self, wrapper, it: int) -> str:
        return (f'training diverged: the loss scaler skipped {self.max_skipped_steps + 1} '
                f'consecutive steps up to iteration {it + 1} (non-finite gradients; loss '
                f'scale now {wrapper.loss_scaler.get_scale():g}); no checkpoint was written '
                f'after it (limit: DivergenceGuardHook max_skipped_steps='
                f'{self.max_skipped_steps})')

    def _fold(self, runner, terms: Dict[str, torch.Tensor],
              skipped: Optional[torch.Tensor] = None) -> None:
        """Merge this iteration's flags into the record of the first bad one (no sync); a
        step the loss scaler skipped (``skipped`` true) adds nothing."""
        names = list(terms)
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        grad_bad = torch.zeros(len(self._params), dtype=torch.bool, device=values.device)
        if self._grad_finite is not None and self._grad_finite.numel() == len(self._params):
            grad_bad = ~self._grad_finite.to(values.device)  # no step (accumulation): none
        names += [f'gradient of {self._param_names.get(p, "?")}' for p in self._params]
        bad = torch.cat([~torch.isfinite(values), grad_bad])
        if skipped is not None:
            bad = bad & ~skipped.to(bad.device)
        values = torch.cat([values, torch.zeros(len(self._params), device=values.device)])
        if names != self._names:  # a different set of terms: settle the old record first
            self.check(runner)
            self._reset_record(names)
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=values.device)
            self._bad_mask = torch.zeros_like(bad)
            self._bad_values = torch.zeros_like(values)
        new = bad.any() & (self._first_bad < 0)
        self._first_bad = torch.where(new, self._first_bad.new_full((), runner.iter),
                                      self._first_bad)
        self._bad_mask = torch.where(new, bad, self._bad_mask)
        self._bad_values = torch.where(new, values, self._bad_values)

    # ------------------------------------------------------------------ reads (host syncs)
    def check(self, runner) -> None:
        """Raise if the record of any rank holds a bad iteration (one device->host read; in
        a distributed run one all-reduce, every rank raising the same message)."""
        local = self._first_bad_iteration()
        if is_distributed():
            if not global_max(local >= 0):
                return  # no rank has a bad iteration
            reports = gather(self._report(runner) if local >= 0 else None)
            first = min((r for r in reports if r is not None), key=lambda r: r[0])
            rank = reports.index(first)
            raise FloatingPointError(first[1].replace(
                'training diverged at', f'training diverged (rank {rank}) at', 1))
        if local >= 0:
            raise FloatingPointError(self._report(runner)[1])

    def _first_bad_iteration(self) -> int:
        """The earliest iteration of the record and of the skip count, -1 if none (one
        device->host read)."""
        record = [t for t in (self._first_bad, self._first_collapse) if t is not None]
        if not record:
            return -1
        iters = torch.stack([t.to(record[0].device) for t in record])
        none = torch.iinfo(torch.long).max
        first = int(torch.where(iters >= 0, iters, none).min())
        return -1 if first == none else first

    def _report(self, runner):
        """(first bad iteration, message) of this rank's record."""
        collapse = -1 if self._first_collapse is None else int(self._first_collapse)
        it = -1 if self._first_bad is None else int(self._first_bad)
        if collapse >= 0 and not 0 <= it < collapse:
            wrapper = next(w for w, _ in self._optimizers(runner)
                           if getattr(w, 'overflowed', None) is not None)
            return collapse, self._collapse_message(wrapper, collapse)
        bad = [n for n, b in zip(self._names, self._bad_mask.tolist()) if b]
        values = dict(zip(self._names, self._bad_values.tolist()))
        losses = [n for n in bad if not n.startswith('gradient of ')]
        if len(losses) > 1:  # 'loss' is the sum of the terms: name the terms
            losses.remove('loss')
        grads = [n[len('gradient of '):] for n in bad if n.startswith('gradient of ')]
        what = []
        if losses:
            what.append('non-finite ' + first_names([f'{n}={values[n]}' for n in losses]))
        if grads:
            what.append(f'non-finite gradient of {len(grads)} parameters ({first_names(grads)})')
        return it, (
            f'training diverged at iteration {it + 1}: {"; ".join(what)}; stopped without '
            f'saving non-finite weights (last checkpoint: {last_checkpoint(runner)}); lower '
            'the lr or check the data')

    def after_train_epoch(self, runner) -> None:
        self.check(runner)

    def before_save_all_ranks(self, runner) -> None:
        """Every rank, before a save: the record, then the weights (in DDP every rank holds
        them all; under FSDP its shards), as one decision of all ranks."""
        self.check(runner)
        state = {name: local_shard(p) for name, p in get_ori_model(runner.model)
                 .state_dict().items()}
        bad = nonfinite_tensors(state)
        if global_max(len(bad)):
            reports = gather((bad, last_checkpoint(runner)))  # rank 0 names the pointer
            names = sorted({n for names, _ in reports for n in names})
            raise FloatingPointError(self._refusal(runner, names, state, reports[0][1]))
        self._checked_iter = runner.iter

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(self, '_checked_iter', None) == runner.iter:
            return  # checked on every rank just before this save
        self.check(runner)  # a save outside this package's save paths: rank-local check
        state = checkpoint.get('state_dict', {})
        bad = nonfinite_tensors(state)
        if bad:
            raise FloatingPointError(self._refusal(runner, bad, state, last_checkpoint(runner)))

    @staticmethod
    def _refusal(runner, bad: List[str], state: dict, last: str) -> str:
        total = sum(isinstance(v, torch.Tensor) and v.is_floating_point()
                    for v in state.values())
        return (f'refusing to save a checkpoint at iteration {runner.iter}: {len(bad)} of '
                f'{total} weight tensors are non-finite ({first_names(bad)}); last checkpoint: '
                f'{last}')
