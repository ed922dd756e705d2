"""A pre-trained backbone that does not fit the downstream model is an error, not a warning.

mmengine's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads with ``strict=False`` and
only logs missing, unexpected and size-mismatched keys, so a ViT-S export given to a ViT-B
config trains a mostly random backbone. :func:`check_pretrained_fits` compares the checkpoint
with every module whose ``init_cfg`` is ``Pretrained`` before the weights are loaded and
raises one line naming the mismatch (for ViTs: width, depth, MLP width, patch size,
registers). Allowed, because mmpretrain handles them on load: a position embedding with
another number of patches (bicubic resize to ``img_size``) and a missing ``mask_token``
(dropped by ``tools/model_converters/extract_backbone.py``; only masked pre-training uses it).

``PretrainedMatchHook`` runs the check in ``before_run`` of a training run, i.e. before
``Runner`` initialises the weights; the downstream configs in ``configs/benchmarks`` list it in
``custom_hooks``. Other code (e.g. a script that builds a segmentor itself) can call
:func:`check_pretrained_fits` on the model directly.
"""
import re
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_with_prefix

ALLOWED_MISSING = ('mask_token',)
SHOWN = 3  # key names shown per kind of mismatch


def vit_architecture(state: Dict[str, torch.Tensor]) -> Optional[Dict[str, object]]:
    """Width, depth, MLP width, patch size and registers of an mmpretrain-layout ViT state
    dict (None if it is not one)."""
    proj = state.get('patch_embed.projection.weight')
    if proj is None or proj.dim() != 4:
        return None
    layers = {int(m.group(1)) for k in state for m in [re.match(r'layers\.(\d+)\.', k)] if m}
    fc1 = state.get('layers.0.ffn.layers.0.0.weight')
    registers = state.get('register_tokens')
    return dict(embed_dims=proj.shape[0], num_layers=len(layers),
                feedforward_channels=None if fc1 is None else fc1.shape[0],
                patch_size=tuple(proj.shape[2:]), in_channels=proj.shape[1],
                num_register_tokens=0 if registers is None else registers.shape[1])


def pos_embed_resizable(ckpt: torch.Tensor, model: torch.Tensor) -> bool:
    """Same (1, L, C) layout and width, another number of tokens: mmpretrain resizes it."""
    return ckpt.dim() == model.dim() == 3 and ckpt.shape[2] == model.shape[2]


def describe_mismatch(ckpt: Dict[str, torch.Tensor],
                      model: Dict[str, torch.Tensor]) -> List[str]:
    """What keeps ``ckpt`` from loading into a module with state dict ``model`` (pure)."""
    problems = []
    a, b = vit_architecture(ckpt), vit_architecture(model)
    if a is not None and b is not None:
        diff = [f'{k} {a[k]} vs {b[k]}' for k in a if a[k] != b[k]]
        if diff:
            problems.append('ViT architecture (checkpoint vs model): ' + ', '.join(diff))
    missing = [k for k in model if k not in ckpt and k not in ALLOWED_MISSING]
    unexpected = [k for k in ckpt if k not in model]
    shapes = [f'{k} {tuple(ckpt[k].shape)} vs {tuple(model[k].shape)}'
              for k in model if k in ckpt and ckpt[k].shape != model[k].shape
              and not (k == 'pos_embed' and pos_embed_resizable(ckpt[k], model[k]))]
    for name, items in (('missing', missing), ('unexpected', unexpected),
                        ('size-mismatched', shapes)):
        if items:
            more = f', ... ({len(items)} in all)' if len(items) > SHOWN else ''
            problems.append(f'{name} keys: ' + ', '.join(items[:SHOWN]) + more)
    return problems


def load_init_state(init_cfg: dict) -> Dict[str, torch.Tensor]:
    """The state dict ``PretrainedInit`` would load (mmengine's own readers, same prefixing)."""
    if init_cfg.get('prefix'):
        return _load_checkpoint_with_prefix(init_cfg['prefix'], init_cfg['checkpoint'],
                                            map_location='cpu')
    ckpt = _load_checkpoint(init_cfg['checkpoint'], map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


def pretrained_inits(model: torch.nn.Module):
    """(name, module, init_cfg) of every module initialised from a checkpoint."""
    for name, module in model.named_modules():
        cfgs = getattr(module, 'init_cfg', None)
        for cfg in cfgs if isinstance(cfgs, list) else [cfgs]:
            if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained' and \
                    cfg.get('checkpoint'):
                yield name or 'model', module, cfg


def check_pretrained_fits(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` (one line) if a ``Pretrained`` checkpoint does not fit its module."""
    for name, module, cfg in pretrained_inits(model):
        expected = {k: v for k, v in module.state_dict().items()}
        problems = describe_mismatch(load_init_state(cfg), expected)
        if problems:
            raise ValueError(
                f"checkpoint {cfg['checkpoint']} does not fit {name} "
                f"({type(module).__name__}): {'; '.join(problems)}. Set that module's "
                'architecture to the pre-trained one (docs/downstream.md, "Another backbone")')


@HOOKS.register_module()
class PretrainedMatchHook(Hook):
    """Before a training run initialises the weights, check every ``Pretrained`` init_cfg
    against its module (:func:`check_pretrained_fits`). Registered in mmengine's root
    registry, so mmseg and mmpretrain configs both find it by name."""

    priority = 'VERY_HIGH'
    checked = False  # set by check_pretrained_early

    def before_run(self, runner) -> None:
        if self.checked or not isinstance(runner._train_loop, BaseLoop):  # test()/val()
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_pretrained_fits(model)


def check_pretrained_early(runner) -> None:
    """Run the check of a Runner's ``PretrainedMatchHook`` as soon as the model exists.
    ``Runner.train`` builds the datasets before ``before_run``, so without ADE20K on disk the
    dataset error would hide a mismatched export; ``tools/train.py`` calls this first."""
    hooks = [h for h in runner.hooks if isinstance(h, PretrainedMatchHook)]
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if hooks and isinstance(model, torch.nn.Module):  # FlexibleRunner builds it in train()
        check_pretrained_fits(model)
        for hook in hooks:
            hook.checked = True
