"""mmpretrain's layer-wise lr decay with per-key lr multipliers (DINOv2 / SimDINOv2).

mmpretrain 1.2.0's ``LearningRateDecayOptimWrapperConstructor`` sets every group's lr to
``base_lr * decay ** (max_depth - depth - 1)`` *after* applying ``custom_keys``, so an
``lr_mult`` there is silently ignored, and a matching custom key also switches off the
bias / norm / 1-D weight-decay rules for that parameter. DINOv2 needs both at once for the
patch embedding (lr x 0.2, biases not decayed), hence this subclass.
"""
from typing import Callable, Dict, List, Optional

from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from .frozen_params import FrozenParamsSummaryMixin


def longest_matching_key(name: str, keys) -> Optional[str]:
    """The longest key contained in ``name`` (alphabetical among equals), as mmengine."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return key
    return None


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(FrozenParamsSummaryMixin,
                                        LearningRateDecayOptimWrapperConstructor):
    """``LearningRateDecayOptimWrapperConstructor`` + ``lr_mult`` in ``custom_keys``.

    lr of a parameter = ``base_lr * layer_decay_rate ** (max_depth - depth - 1) * lr_mult``,
    with depths from the model's ``get_layer_depth`` (mmpretrain ViT: embeddings and
    tokens 0, block i -> i + 1, final norm and heads max_depth - 1, i.e. DINOv2's
    ``0.9 ** (L + 1 - layer_id)``). A custom key that only gives ``lr_mult`` leaves the
    weight decay to the usual ``bias/norm/flat_decay_mult`` rules; one that also gives
    ``decay_mult`` overrides them, as in mmpretrain.

    Example (SimDINOv2)::

        paramwise_cfg=dict(layer_decay_rate=0.9, bias_decay_mult=0., norm_decay_mult=0.,
                           flat_decay_mult=0.,
                           custom_keys={'backbone.patch_embed': dict(lr_mult=0.2)})
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        custom_keys = dict(paramwise_cfg.get('custom_keys', {}))
        self.lr_mults: Dict[str, float] = {}
        decay_keys = {}
        for key, cfg in custom_keys.items():
            cfg = dict(cfg)
            if 'lr_mult' in cfg:
                mult = cfg.pop('lr_mult')
                if not isinstance(mult, (int, float)) or mult < 0:
                    raise ValueError(f'custom_keys[{key!r}].lr_mult must be a number >= 0, '
                                     f'got {mult!r}')
                self.lr_mults[key] = float(mult)
            if cfg:
                decay_keys[key] = cfg
        paramwise_cfg['custom_keys'] = decay_keys
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   get_layer_depth: Optional[Callable] = None, **kwargs) -> None:
        super().add_params(params, module, prefix=prefix, get_layer_depth=get_layer_depth,
                           **kwargs)
        if prefix != '' or not self.lr_mults:
            return
        for group in params:
            key = longest_matching_key(group['param_name'], self.lr_mults)
            if key is not None:
                group['lr'] *= self.lr_mults[key]
                group['lr_scale'] *= self.lr_mults[key]
