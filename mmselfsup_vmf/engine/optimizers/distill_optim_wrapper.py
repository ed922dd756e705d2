"""Optimiser wrappers with DINO's per-tensor gradient clipping and last-layer freezing.

mmengine's ``clip_grad=dict(max_norm=3)`` clips the *global* norm; DINO, iBOT and SimDINO clip
each parameter tensor separately (``clip_grad=dict(type='per_tensor', max_norm=3.0)`` here;
``type='norm'`` keeps mmengine's global clipping). ``cancel_grads_of`` (set every iteration by
``FreezeLastLayerHook``) lists parameters whose gradients are dropped after clipping and
before the step, as DINO's ``cancel_gradients_last_layer`` does (``grad = None``: AdamW then
skips them entirely, weight decay included).
"""
from typing import Iterable, List, Optional

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmpretrain.registry import OPTIM_WRAPPERS


def _has_accelerator() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def clip_grad_per_tensor_(params: Iterable[torch.Tensor], max_norm: float,
                          eps: float = 1e-6) -> Optional[torch.Tensor]:
    r"""Clip every gradient tensor to norm ``max_norm`` on its own (in place).

    .. math:: g \leftarrow g \cdot \min\!\big(1, \tfrac{c}{\lVert g\rVert_2 + 10^{-6}}\big)

    Returns the largest pre-clipping norm (for logging), or None without gradients.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    for g, n in zip(grads, norms):
        coef = max_norm / (n.float() + eps)
        g.mul_(coef.clamp(max=1.0).to(g.dtype))
    return torch.stack([n.float() for n in norms]).max()


class GradEditMixin:
    """Per-tensor clipping + gradient cancellation for OptimWrapper and AmpOptimWrapper."""

    def _setup_grad_edit(self, clip_grad: Optional[dict]) -> Optional[dict]:
        """Takes the per-tensor setting; returns what mmengine's wrapper should see."""
        clip_grad = dict(clip_grad) if clip_grad else None
        self.per_tensor_max_norm = None
        self.cancel_grads_of: List[torch.Tensor] = []
        if clip_grad is not None and clip_grad.get('type') == 'per_tensor':
            if set(clip_grad) != {'type', 'max_norm'}:
                raise ValueError("clip_grad=dict(type='per_tensor', max_norm=...) takes only "
                                 f'max_norm, got keys {sorted(clip_grad)}')
            self.per_tensor_max_norm = float(clip_grad['max_norm'])
            return None
        return clip_grad

    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g['params']
                if p.requires_grad and p.grad is not None]

    def _edit_grads(self) -> None:
        if self.per_tensor_max_norm:
            biggest = clip_grad_per_tensor_(self._params(), self.per_tensor_max_norm)
            if biggest is not None:
                self.message_hub.update_scalar('train/grad_norm_max', float(biggest))
        elif self.clip_grad_kwargs:
            self._clip_grad()
        for p in self.cancel_grads_of:
            p.grad = None

    def _needs_edit(self) -> bool:
        return bool(self.per_tensor_max_norm or self.clip_grad_kwargs or self.cancel_grads_of)


@OPTIM_WRAPPERS.register_module()
class DistillOptimWrapper(GradEditMixin, OptimWrapper):
    """fp32 wrapper: clip (per tensor or global) -> cancel frozen grads -> step."""

    def __init__(self, optimizer, clip_grad: Optional[dict] = None, **kwargs):
        OptimWrapper.__init__(self, optimizer, clip_grad=self._setup_grad_edit(clip_grad),
                              **kwargs)

    def step(self, **kwargs) -> None:
        if self._needs_edit():
            self._edit_grads()
        self.optimizer.step(**kwargs)


@OPTIM_WRAPPERS.register_module()
class AmpDistillOptimWrapper(GradEditMixin, AmpOptimWrapper):
    """fp16/bf16 wrapper: unscale -> clip -> cancel frozen grads -> scaler step.

    On a machine without an accelerator mmengine's AmpOptimWrapper refuses to build; here
    ``dtype='bfloat16'`` then runs CPU bf16 autocast with no loss scaling (bf16 has fp32's
    range), so AMP configs can be smoke-tested on CPU. fp16 still needs a GPU.
    """

    def __init__(self, optimizer, loss_scale='dynamic', dtype=None, use_fsdp: bool = False,
                 clip_grad: Optional[dict] = None, **kwargs):
        clip_grad = self._setup_grad_edit(clip_grad)
        if _has_accelerator():
            AmpOptimWrapper.__init__(self, loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp,
                                     optimizer=optimizer, clip_grad=clip_grad, **kwargs)
            return
        if dtype not in ('bfloat16', torch.bfloat16):
            raise RuntimeError(
                f'AmpDistillOptimWrapper(dtype={dtype!r}) needs a GPU; on a CPU use '
                "dtype='bfloat16' or optim_wrapper.type='DistillOptimWrapper'")
        OptimWrapper.__init__(self, optimizer, clip_grad=clip_grad, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16

    def step(self, **kwargs) -> None:
        if self._needs_edit():
            self.loss_scaler.unscale_(self.optimizer)
            self._edit_grads()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update_param)
