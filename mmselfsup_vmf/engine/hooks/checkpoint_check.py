"""Fail with one clear line when a checkpoint does not belong to the model.

mmengine loads checkpoints with ``strict=False``: resuming a checkpoint of another model only
logs a warning about missing/unexpected keys and then fails later with an unrelated error
(e.g. the optimiser's "parameter group that doesn't match the size") or trains a partly
loaded model. ``tools/train.py`` registers this hook on every Runner it builds.
"""
import re
from typing import Dict, List, Sequence, Tuple

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model


def state_dict_mismatch(model_state: Dict, ckpt_state: Dict,
                        revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''),)):
    """(missing, unexpected, wrong_shape) of a checkpoint state dict against the model's.

    Keys are revised as mmengine's loader does (``module.`` prefix dropped); wrong_shape
    lists ``(key, checkpoint shape, model shape)``.
    """
    revised = {}
    for key, value in ckpt_state.items():
        for pattern, repl in revise_keys:
            key = re.sub(pattern, repl, key)
        revised[key] = value
    missing = [k for k in model_state if k not in revised]
    unexpected = [k for k in revised if k not in model_state]
    wrong_shape = [(k, tuple(revised[k].shape), tuple(v.shape)) for k, v in model_state.items()
                   if k in revised and hasattr(revised[k], 'shape')
                   and tuple(revised[k].shape) != tuple(v.shape)]
    return missing, unexpected, wrong_shape


def _some(items: List, limit: int = 3) -> str:
    shown = ', '.join(str(i) for i in items[:limit])
    return shown + (', ...' if len(items) > limit else '')


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """On resume, the checkpoint's state dict must match the model exactly (keys and
    shapes); with ``load_from`` (no resume) partial loading stays allowed, but a checkpoint
    sharing no key with the model is an error."""

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = get_ori_model(runner.model)
        model_state = model.state_dict()
        ckpt_state = checkpoint.get('state_dict', checkpoint)
        missing, unexpected, wrong_shape = state_dict_mismatch(model_state, ckpt_state)
        resume = bool(getattr(runner, '_resume', False))
        source = getattr(runner, '_load_from', None) or 'the latest checkpoint in work_dir'
        model_name = type(model).__name__
        if resume and (missing or unexpected or wrong_shape):
            parts = []
            if missing:
                parts.append(f'{len(missing)} missing keys ({_some(missing)})')
            if unexpected:
                parts.append(f'{len(unexpected)} unexpected keys ({_some(unexpected)})')
            if wrong_shape:
                parts.append(f'{len(wrong_shape)} keys with another shape (' + _some(
                    [f'{k}: checkpoint {a} vs model {b}' for k, a, b in wrong_shape]) + ')')
            raise ValueError(f'cannot resume from {source}: it was saved by a different '
                             f'model than this {model_name}: ' + '; '.join(parts))
        if resume:
            from mmselfsup_vmf.engine.short_run import check_resumed_schedule
            check_resumed_schedule(runner, checkpoint)
        if not resume and model_state and len(missing) == len(model_state):
            raise ValueError(f'load_from={source}: no key of the checkpoint matches this '
                             f'{model_name} (e.g. checkpoint {_some(list(ckpt_state))} vs '
                             f'model {_some(list(model_state))})')
