"""Constructor argument checks whose one-line messages name the config key (e.g.
``model.head.num_prototypes must be an integer >= 1 or None, got -1``) instead of the error
torch raises later (``Trying to create tensor with negative dimension``)."""
import inspect
import math
from numbers import Integral, Real
from typing import Optional


def check_int(key: str, value, minimum: int = 1, allow_none: bool = False):
    """``value`` is an integer >= ``minimum`` (or None if allowed); returns it."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        none = ' or None' if allow_none else ''
        raise ValueError(f'{key} must be an integer >= {minimum}{none}, got {value!r}')
    return value


def check_positive(key: str, value):
    """``value`` is a finite number > 0 (temperatures, eps); returns it."""
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or value <= 0):
        raise ValueError(f'{key} must be a finite number > 0, got {value!r}')
    return value


def check_fraction(key: str, value):
    """``value`` is in [0, 1] (EMA momenta); returns it."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f'{key} must be a number in [0, 1], got {value!r}')
    return value


def _dataset_chain(dataset: dict, key: str):
    """(config key, dataset dict) from the outermost to the innermost wrapped dataset."""
    while isinstance(dataset, dict):
        yield key, dataset
        key, dataset = key + '.dataset', dataset.get('dataset')


def check_data_root(cfg, key: str = 'train_dataloader') -> None:
    """A local ``data_root`` of the training data that does not exist is one line naming the
    config key, the path and the fix, before anything is built (mmpretrain's error, e.g.
    ``FileNotFoundError: data/imagenet/train``, names neither the key nor the fix)."""
    import os.path as osp
    loader = cfg.get(key)
    if not isinstance(loader, dict):
        return
    for name, dataset in _dataset_chain(loader.get('dataset'), f'{key}.dataset'):
        root = dataset.get('data_root')
        if isinstance(root, str) and root and '://' not in root and not osp.isdir(root):
            raise FileNotFoundError(
                f'{name}.data_root={root!r} does not exist (a {dataset.get("type")} dataset); '
                f'point it to your data with --cfg-options {name}.data_root=/path/to/data, '
                'or pre-train on a folder of your own images as in docs/custom_dataset.md')


# the official DINO / iBOT argument names (facebookresearch/dino main_dino.py and
# vision_transformer.py DINOHead; bytedance/ibot main_ibot.py) -> ours; '.x' is a sibling key
OFFICIAL_NAMES = {
    'in_dim': '.in_channels', 'out_dim': '.num_prototypes',
    'patch_out_dim': '.num_patch_prototypes', 'hidden_dim': '.hidden_channels',
    'bottleneck_dim': '.bottleneck_channels', 'nlayers': '.num_layers',
    'use_bn_in_head': '.use_bn', 'momentum_teacher': 'model.teacher_momentum',
    'warmup_teacher_temp': 'model.teacher_temp.start (teacher_temp=dict(start, end, '
                           'warmup_epochs))',
    'warmup_teacher_temp_epochs': 'model.teacher_temp.warmup_epochs',
    'warmup_teacher_patch_temp': 'model.teacher_patch_temp.start',
    'teacher_patch_temp': 'model.teacher_patch_temp.end',
    'ncrops': "the MultiCrop transform's num_global + num_local",
    'local_crops_number': "the MultiCrop transform's num_local",
    'nepochs': 'train_cfg.max_epochs', 'epochs': 'train_cfg.max_epochs',
    'freeze_last_layer': "custom_hooks' FreezeLastLayerHook(epochs=...)",
    'lambda1': 'model.lambda_cls', 'lambda2': 'model.lambda_patch',
    'mim_start_epoch': 'model.data_preprocessor.mask_start_epoch',
}


def _accepted_arguments(cls) -> Optional[set]:
    """Keyword arguments of ``cls(...)``, following ``**kwargs`` up the MRO (None: any)."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def check_argument_names(key: str, cfg, registry) -> None:
    """Every key of the module config ``cfg`` (built from ``registry``) is an argument of its
    class; DINO's and iBOT's names (``out_dim`` ...) are mapped to ours in the message,
    instead of ``TypeError: __init__() got an unexpected keyword argument 'out_dim'``."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        return
    cls = cfg['type'] if inspect.isclass(cfg['type']) else registry.get(cfg['type'])
    accepted = _accepted_arguments(cls) if cls is not None else None
    if accepted is None:
        return
    for name in cfg:
        if name == 'type' or name in accepted:
            continue
        ours = OFFICIAL_NAMES.get(name)
        if ours is not None:
            ours = key + ours if ours.startswith('.') else ours
            raise ValueError(f'{key}.{name} is the official DINO/iBOT name; {cls.__name__} '
                             f'calls it {ours}')
        raise ValueError(f'{key}.{name} is not an argument of {cls.__name__}; its arguments: '
                         + ', '.join(sorted(accepted - {'self'})))
