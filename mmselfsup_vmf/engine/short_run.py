"""Shorten any epoch-based config so that every schedule follows the new length.

``tools/train.py --epochs E --epoch-iters N`` calls :func:`shorten_run`. Overriding only
``train_cfg.max_epochs`` leaves the lr / weight-decay schedulers on the old length (a 1-epoch
run of a 3-epoch config ends at the warm-up peak) while the EMA follows ``max_iters``; this
compresses all of them by the same factor ``E / E_old``:

- every epoch-based ``param_scheduler`` (lr, weight decay, momentum): ``begin``, ``end``,
  ``T_max``, ``milestones``, ``step_size``;
- the teacher temperature warm-ups (``model.teacher_temp`` / ``teacher_patch_temp``
  ``warmup_epochs``), iBOT's ``mask_start_epoch`` and ``FreezeLastLayerHook.epochs``, rounded
  to whole epochs because DINO's temperature schedule has one value per epoch;
- epoch intervals of validation and of the checkpoint and k-NN hooks are capped at ``E``.

The EMA momentum needs nothing: ``TrainProgressHook`` gives the model the real ``max_iters``.
``N`` caps each epoch at N iterations by keeping the first ``N x batch x world size`` samples
of the innermost dataset (mmengine ``BaseDataset(indices=...)``); the epoch-based schedulers
are then converted to iterations here, rounded, so warm-up boundaries land on whole steps.
"""
import math
import os
from fractions import Fraction
from typing import Optional

from mmengine.config import Config
from mmengine.logging import print_log

EPOCH_KEYS = ('begin', 'end', 'T_max', 'step_size')


def _scale(value, factor: Fraction) -> float:
    return float(Fraction(value) * factor)


def _scale_scheduler(sched: dict, factor: Fraction, epoch_iters: Optional[int]) -> None:
    if not sched.get('by_epoch', True):
        return
    # a cosine spanning [begin, end) keeps T_max = end - begin after rounding
    spans = 'T_max' in sched and 'end' in sched and \
        sched['T_max'] == sched['end'] - sched.get('begin', 0)
    for key in EPOCH_KEYS:
        if key in sched and sched[key] is not None and sched[key] != float('inf'):
            sched[key] = _scale(sched[key], factor)
    if 'milestones' in sched:
        sched['milestones'] = [_scale(m, factor) for m in sched['milestones']]
    if epoch_iters is not None and sched.get('convert_to_iter_based', False):
        # exact iteration boundaries (mmengine would truncate int(begin * epoch_length))
        for key in EPOCH_KEYS:
            if key in sched and sched[key] is not None and sched[key] != float('inf'):
                sched[key] = _to_iters(sched[key], epoch_iters)
        if spans:
            sched['T_max'] = sched['end'] - sched.get('begin', 0)
        if 'milestones' in sched:
            sched['milestones'] = [_to_iters(m, epoch_iters) for m in sched['milestones']]
        sched['by_epoch'] = False
        sched.pop('convert_to_iter_based')


def _to_iters(epochs: float, epoch_iters: int) -> int:
    return int(math.floor(epochs * epoch_iters + 0.5))


def _round_epochs(value, factor: Fraction) -> int:
    return int(round(Fraction(value) * factor))


def _innermost_dataset(dataset: dict) -> dict:
    while isinstance(dataset.get('dataset'), dict):
        dataset = dataset['dataset']
    return dataset


def _scaled_schedulers(scheds, factor: Fraction, epoch_iters: Optional[int]) -> list:
    scheds = [scheds] if isinstance(scheds, dict) else list(scheds or [])
    for sched in scheds:
        _scale_scheduler(sched, factor, epoch_iters)
    kept = [s for s in scheds if not _too_short(s)]
    dropped = [f"{s.get('type')} [{s.get('begin', 0)}, {s['end']})" for s in scheds
               if _too_short(s)]
    if dropped:
        print_log(f'--epochs/--epoch-iters: dropped param_scheduler phase(s) too short for '
                  f'this run: {", ".join(dropped)} (in iterations)', logger='current')
    return kept


def _too_short(sched: dict) -> bool:
    """A phase shorter than half an iteration (e.g. a 10-of-100-epoch warm-up in 2
    iterations) rounds to an empty range, which mmengine rejects. mmengine's Linear*
    schedulers reach ``end_factor`` only on their second step (``total_iters = end - begin -
    1``): one step would leave the lr at ``start_factor`` for the rest of the chain."""
    if sched.get('by_epoch', True) or 'end' not in sched:
        return False
    minimum = 2 if str(sched.get('type', '')).startswith('Linear') else 1
    return sched['end'] - sched.get('begin', 0) < minimum


def fit_schedulers_to_epoch_length(runner) -> None:
    """After ``--epochs`` without ``--epoch-iters``, convert the epoch-based schedulers that
    mmengine would convert to iterations here, with the real epoch length and rounding.

    mmengine truncates ``int(end * epoch_length)``: ``--epochs 1`` of the 3-epoch demo on a
    2-iteration epoch turns its 1/3-epoch warm-up into ``begin=0, end=0`` and mmengine stops
    with "end should be larger than begin". Rounded, the warm-up keeps 1 iteration (a phase
    under half an iteration is dropped, as with ``--epoch-iters``). Builds the train loop
    (and its dataset) to know the epoch length; ``Runner.train`` reuses it."""
    from mmengine.runner import Runner
    if not isinstance(runner, Runner):
        return  # FlexibleRunner (FSDP2) builds its loop after its strategy: not before
    scheds = runner.param_schedulers
    if not isinstance(scheds, (list, dict)) or isinstance(scheds, dict) and 'type' not in scheds:
        return  # already built, or one list per optimiser: left to mmengine
    epoch_length = len(runner.train_loop.dataloader)
    runner.param_schedulers = _scaled_schedulers(scheds, Fraction(1), epoch_length)


def shorten_run(cfg: Config, epochs: Optional[int] = None,
                epoch_iters: Optional[int] = None) -> Config:
    """Rescale ``cfg`` in place to ``epochs`` epochs of at most ``epoch_iters`` iterations."""
    loop = cfg.get('train_cfg') or {}
    if loop.get('type', 'EpochBasedTrainLoop') != 'EpochBasedTrainLoop' or \
            'max_epochs' not in loop:
        raise ValueError('--epochs/--epoch-iters need an epoch-based train_cfg '
                         f"(EpochBasedTrainLoop with max_epochs), got train_cfg={dict(loop)}")
    if epochs is not None and epochs < 1:
        raise ValueError(f'--epochs must be >= 1, got {epochs}')
    if epoch_iters is not None and epoch_iters < 1:
        raise ValueError(f'--epoch-iters must be >= 1, got {epoch_iters}')
    old_epochs = int(loop['max_epochs'])
    epochs = old_epochs if epochs is None else int(epochs)
    factor = Fraction(epochs, old_epochs)
    loop['max_epochs'] = epochs
    if 'val_interval' in loop:
        loop['val_interval'] = min(int(loop['val_interval']), epochs)

    if 'param_scheduler' in cfg:
        cfg.param_scheduler = _scaled_schedulers(cfg.param_scheduler, factor, epoch_iters)

    model = cfg.get('model', {})
    for key in ('teacher_temp', 'teacher_patch_temp'):
        if isinstance(model.get(key), dict) and 'warmup_epochs' in model[key]:
            model[key]['warmup_epochs'] = _round_epochs(model[key]['warmup_epochs'], factor)
    preprocessor = model.get('data_preprocessor') or {}
    if 'mask_start_epoch' in preprocessor:
        preprocessor['mask_start_epoch'] = _round_epochs(preprocessor['mask_start_epoch'],
                                                         factor)
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') == 'FreezeLastLayerHook' and 'epochs' in hook:
            hook['epochs'] = _round_epochs(hook['epochs'], factor)
        if hook.get('by_epoch', True) and 'interval' in hook:
            hook['interval'] = min(int(hook['interval']), epochs)
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint and checkpoint.get('by_epoch', True) and 'interval' in checkpoint:
        checkpoint['interval'] = min(int(checkpoint['interval']), epochs)

    if epoch_iters is not None:
        loader = cfg.train_dataloader
        world_size = int(os.environ.get('WORLD_SIZE', 1))
        _innermost_dataset(loader.dataset)['indices'] = (
            epoch_iters * int(loader.batch_size) * world_size)
    return cfg


# scheduler state that changes as training runs (the rest is the schedule's shape)
PROGRESS_KEYS = ('last_step', '_global_step', '_last_value', 'base_values', 'verbose',
                 '_get_value_called_within_step')


def _shape(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in PROGRESS_KEYS}


def check_resumed_schedule(runner, checkpoint: dict) -> None:
    """Refuse to resume into a schedule other than the checkpoint's (e.g. ``--epochs 2
    --resume`` after a 1-epoch run): mmengine restores every param_scheduler's state, ends
    included, so the added epochs would run at the old schedule's final lr, silently."""
    saved = checkpoint.get('param_schedulers')
    built = runner.param_schedulers
    if not isinstance(saved, list) or not isinstance(built, list) or not all(
            hasattr(s, 'state_dict') for s in built):
        return  # none saved, not resumed, or one list per optimiser: left to mmengine
    new = [s.state_dict() for s in built]
    diff = [f'{len(saved)} phases vs {len(new)}'] if len(saved) != len(new) else []
    for i, (old_state, new_state) in enumerate(zip(saved, new)):
        old_shape, new_shape = _shape(old_state), _shape(new_state)
        keys = [k for k in new_shape if old_shape.get(k) != new_shape[k]]
        if keys:
            name = type(built[i]).__name__
            diff.append(f'param_scheduler[{i}] {name} ' + ', '.join(
                f'{k} {old_shape.get(k)} vs {new_shape[k]}' for k in keys))
    if diff:
        epochs = checkpoint.get('meta', {}).get('epoch')
        from mmengine.runner import find_latest_checkpoint
        source = getattr(runner, '_load_from', None) or find_latest_checkpoint(runner.work_dir)
        raise ValueError(
            f'cannot resume into another schedule (checkpoint vs now, in iterations: '
            f'{"; ".join(diff)}): mmengine restores the checkpoint\'s schedule, so added '
            f'epochs would run at its final lr. Resume with the original length (e.g. the '
            f'same --epochs) to finish an interrupted run; to train longer, start a new run '
            f'with the longer --epochs in a new --work-dir (add --cfg-options '
            f'load_from={source} to start from its weights: the schedule restarts; '
            f'it stopped at epoch {epochs})')
