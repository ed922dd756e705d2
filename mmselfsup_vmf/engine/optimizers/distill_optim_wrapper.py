"""Optimiser wrappers with DINO's per-tensor gradient clipping and last-layer freezing.

mmengine's ``clip_grad=dict(max_norm=3)`` clips the *global* norm; DINO, iBOT and SimDINO clip
each parameter tensor separately (``clip_grad=dict(type='per_tensor', max_norm=3.0)`` here;
``type='norm'`` keeps mmengine's global clipping). SimDINOv2 (a DINOv2 code base) clips the
global norm of each student submodule separately (FSDP's ``clip_grad_norm_`` per wrapped
module: backbone, head): ``type='per_module'``, the module being the first component of each
group's ``param_name`` (one parameter per group, as ``LayerDecayOptimWrapperConstructor``
builds them). ``cancel_grads_of`` (set every iteration by
``FreezeLastLayerHook``) lists parameters whose gradients are dropped after clipping and
before the step, as DINO's ``cancel_gradients_last_layer`` does (``grad = None``: AdamW then
skips them entirely, weight decay included).
"""
from contextlib import contextmanager
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as torch_dist
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmpretrain.registry import OPTIM_WRAPPERS
from torch import nn
from torch.distributed.tensor import DTensor

from ...models.losses import numerics
from ...models.losses.numerics import host_checks_are_free
from ...models.utils.dist import local_shard


def _has_accelerator() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _sharded_on(t: torch.Tensor):
    """The process group over which DTensor ``t`` is sharded (FSDP2: Shard(0) on a 1-D
    mesh), or None for a plain, replicated or differently laid-out tensor."""
    if (isinstance(t, DTensor) and t.device_mesh.ndim == 1
            and all(p.is_shard() for p in t.placements)):
        return t.device_mesh.get_group()
    return None


def per_tensor_norms(tensors: List[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of every tensor, as one vector on the tensors' device (float32 for
    half-precision tensors; float64 stays float64).

    One foreach kernel over the local data; for FSDP2-sharded tensors the squared local norms
    of all of them are summed over the ranks in a single all-reduce (a DTensor norm would
    issue one all-reduce per tensor).
    """
    norms = [n.to(torch.promote_types(n.dtype, torch.float32))
             for n in torch._foreach_norm([local_shard(t) for t in tensors])]
    groups = [_sharded_on(t) for t in tensors]
    sharded = [g for g in groups if g is not None]
    if not sharded:
        return torch.stack(norms)
    if any(g is not sharded[0] for g in sharded):
        raise ValueError('per-tensor clipping: gradients are sharded over different process '
                         'groups; shard the model with one mesh')
    # squares of the replicated tensors' norms enter the sum as 0 and are kept as they are
    squares = torch.stack([n.square() if g is not None else torch.zeros_like(n)
                           for n, g in zip(norms, groups)])
    torch_dist.all_reduce(squares, group=sharded[0])
    if len(sharded) == len(groups):
        return squares.sqrt()
    return torch.stack([sq.sqrt() if g is not None else n
                        for sq, n, g in zip(squares.unbind(), norms, groups)])


def clip_grad_per_tensor_(params: Iterable[torch.Tensor], max_norm: float,
                          eps: float = 1e-6) -> Optional[torch.Tensor]:
    r"""Clip every gradient tensor to norm ``max_norm`` on its own (in place).

    .. math:: g \leftarrow g \cdot \min\!\big(1, \tfrac{c}{\lVert g\rVert_2 + 10^{-6}}\big)

    DINO's ``utils.clip_gradients`` law, with the norms from :func:`per_tensor_norms` and
    the scaling as one foreach multiply (no host read). Returns the largest pre-clipping
    norm (a device tensor, for logging), or None without gradients.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norms = per_tensor_norms(grads)
    coefs = (max_norm / (norms + eps)).clamp(max=1.0)
    local = [local_shard(g) for g in grads]
    torch._foreach_mul_(local, [c.to(g.dtype) for c, g in zip(coefs.unbind(), local)])
    return norms.max()


# how an optimiser computes its step, not what it has learnt: a checkpoint keeps the
# configured choice (a non-fused checkpoint resumes into a fused fp16 recipe and back)
IMPLEMENTATION_KEYS = ('fused', 'foreach')


def keep_implementation(optimizer, state_dict: dict) -> dict:
    """``load_state_dict`` pre-hook: the saved groups take this optimiser's implementation
    flags (torch would take the saved ones; a fused step with the saved ``fused=None``
    fails under a loss scaler). torch then also moves the step counters where fused AdamW
    keeps them (float32, on the parameter's device)."""
    groups = [dict(saved, **{k: group[k] for k in IMPLEMENTATION_KEYS if k in group})
              for saved, group in zip(state_dict['param_groups'], optimizer.param_groups)]
    return dict(state_dict, param_groups=groups)


class GradEditMixin:
    """Per-tensor clipping + gradient cancellation for OptimWrapper and AmpOptimWrapper."""

    def _setup_grad_edit(self, clip_grad: Optional[dict]) -> Optional[dict]:
        """Takes the per-tensor setting; returns what mmengine's wrapper should see."""
        clip_grad = dict(clip_grad) if clip_grad else None
        self.per_tensor_max_norm = self.per_module_max_norm = None
        self.cancel_grads_of: List[torch.Tensor] = []
        self.pending_scalars: Dict[str, torch.Tensor] = {}  # device values not yet logged
        kind = (clip_grad or {}).get('type')
        if kind in ('per_tensor', 'per_module'):
            if set(clip_grad) != {'type', 'max_norm'}:
                raise ValueError(f"clip_grad=dict(type='{kind}', max_norm=...) takes only "
                                 f'max_norm, got keys {sorted(clip_grad)}')
            setattr(self, f'{kind}_max_norm', float(clip_grad['max_norm']))
            return None
        return clip_grad

    def _params(self, groups=None) -> List[torch.Tensor]:
        return [p for g in (groups or self.optimizer.param_groups) for p in g['params']
                if p.requires_grad and p.grad is not None]

    def _groups_by_module(self) -> dict:
        """Param groups by top-level module (the first component of ``param_name``)."""
        modules = {}
        for group in self.optimizer.param_groups:
            if 'param_name' not in group:
                raise ValueError("clip_grad=dict(type='per_module') needs param groups named "
                                 "by parameter: use constructor="
                                 "'LayerDecayOptimWrapperConstructor'")
            modules.setdefault(group['param_name'].split('.')[0], []).append(group)
        return modules

    def _edit_grads(self) -> dict:
        """Clips and cancels; returns the norms to log (device tensors) by message-hub key."""
        logged = {}
        if self.per_tensor_max_norm:
            biggest = clip_grad_per_tensor_(self._params(), self.per_tensor_max_norm)
            if biggest is not None:
                logged['train/grad_norm_max'] = biggest
        elif self.per_module_max_norm:
            for module, groups in self._groups_by_module().items():
                params = self._params(groups)
                if params:
                    logged[f'train/grad_norm_{module}'] = nn.utils.clip_grad_norm_(
                        params, self.per_module_max_norm)
        elif self.clip_grad_kwargs:
            # mmengine's _clip_grad, with the norm read after the step instead of before
            params = self._params()
            norm = self.clip_func(params, **self.clip_grad_kwargs) if params else None
            if norm is not None:  # clip_grad_value_ returns None
                logged[f'train/{self.grad_name}'] = norm
        for p in self.cancel_grads_of:
            p.grad = None
        return logged

    def _log_norms(self, logged: dict) -> None:
        # read only after the optimiser step is queued: reading before it would make the
        # host wait for the backward pass before it can launch the step. On an accelerator
        # the value stays on the device until LoggedRuntimeInfoHook reads it with the loss
        # terms on a logging iteration.
        for key, value in logged.items():
            if host_checks_are_free(value):
                self.message_hub.update_scalar(key, float(value))
            else:
                self.pending_scalars[key] = value.detach()

    def _needs_edit(self) -> bool:
        return bool(self.per_tensor_max_norm or self.per_module_max_norm
                    or self.clip_grad_kwargs or self.cancel_grads_of)


@OPTIM_WRAPPERS.register_module()
class DistillOptimWrapper(GradEditMixin, OptimWrapper):
    """fp32 wrapper: clip (per tensor, per module or global) -> cancel frozen grads -> step."""

    def __init__(self, optimizer, clip_grad: Optional[dict] = None, **kwargs):
        OptimWrapper.__init__(self, optimizer, clip_grad=self._setup_grad_edit(clip_grad),
                              **kwargs)
        optimizer.register_load_state_dict_pre_hook(keep_implementation)

    def step(self, **kwargs) -> None:
        logged = self._edit_grads() if self._needs_edit() else {}
        self.optimizer.step(**kwargs)
        self._log_norms(logged)


def build_grad_scaler(loss_scale, device_type: str) -> Tuple[torch.amp.GradScaler,
                                                                 Optional[float]]:
    """``torch.amp.GradScaler`` for ``device_type`` from mmengine's ``loss_scale`` argument.

    Same meaning as in mmengine's AmpOptimWrapper: ``'dynamic'`` (torch's defaults: initial
    scale 2^16, halved on overflow, doubled after 2000 clean steps), a float (static scale;
    also returned as the value ``update`` resets to) or a dict of GradScaler arguments.
    """
    if loss_scale == 'dynamic':
        return torch.amp.GradScaler(device_type), None
    if isinstance(loss_scale, float):
        return torch.amp.GradScaler(device_type, init_scale=loss_scale), loss_scale
    if isinstance(loss_scale, dict):
        return torch.amp.GradScaler(device_type, **loss_scale), None
    raise TypeError('optim_wrapper.loss_scale must be a float, a dict or "dynamic", got '
                    f'{loss_scale!r}')


def overflow_flag(scaler: torch.amp.GradScaler, optimizer) -> Optional[torch.Tensor]:
    """Whether ``scaler.step(optimizer)`` found an infinity or NaN (i.e. skipped the update),
    as a device bool tensor. Read from the scaler's per-optimiser record of this step (kept
    until ``update``), which is what a fused optimiser receives as ``found_inf``; None for a
    scaler without that record (DivergenceGuardHook then falls back on host logic)."""
    states = getattr(scaler, '_per_optimizer_states', None)
    if states is None or id(optimizer) not in states:
        return None
    found = states[id(optimizer)]['found_inf_per_device'].values()
    device = scaler._get_scale_async().device
    return sum(f.to(device, non_blocking=True) for f in found) > 0


@OPTIM_WRAPPERS.register_module()
class AmpDistillOptimWrapper(GradEditMixin, AmpOptimWrapper):
    """fp16/bf16 wrapper: unscale -> clip -> cancel frozen grads -> scaler step.

    mmengine's AmpOptimWrapper (scaled backward, state dict with ``loss_scaler``, grad
    accumulation context) does the work. It refuses to build without an accelerator and its
    ``autocast`` accepts only bf16 on a CPU, although torch's CPU autocast runs float16 and
    ``torch.amp.GradScaler('cpu')`` scales losses; so on a CPU-only machine the scaler is
    built for the CPU and the autocast context is torch's. fp16 then runs on the CPU with
    dynamic loss scaling exactly as on a GPU (``dtype=None`` means float16 there too).

    bf16 runs without loss scaling (``loss_scale`` is ignored; the scaler is disabled). With
    fp16 the scaler's overflow check reads a flag on the host every step unless the
    optimiser applies it itself (``optimizer=dict(type='AdamW', fused=True)``, the fp16
    recipes' setting: the step then always runs and skips its update on the device).
    ``overflowed`` is the last step's overflow flag as a device tensor (bool), whether or not
    the optimiser is fused, so that ``DivergenceGuardHook`` can count skipped steps without
    a host read.
    """

    overflowed: Optional[torch.Tensor] = None

    def __init__(self, optimizer, loss_scale='dynamic', dtype=None, use_fsdp: bool = False,
                 clip_grad: Optional[dict] = None, **kwargs):
        clip_grad = self._setup_grad_edit(clip_grad)
        if use_fsdp and getattr(optimizer, '_step_supports_amp_scaling', False):
            # torch 2.14: the sharded scaler all-reduces its overflow flag only in unscale_,
            # as a (1,) tensor that the fused step rejects (it expects a scalar)
            raise ValueError("AmpDistillOptimWrapper(use_fsdp=True): torch's "
                             'ShardedGradScaler cannot step a fused optimiser; set '
                             'optim_wrapper.optimizer.fused=False')
        if _has_accelerator():
            self.autocast_device = None  # mmengine's autocast picks the current device
            AmpOptimWrapper.__init__(self, loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp,
                                     optimizer=optimizer, clip_grad=clip_grad, **kwargs)
        else:
            if use_fsdp:
                raise RuntimeError('AmpDistillOptimWrapper(use_fsdp=True) needs an accelerator')
            if isinstance(dtype, str):
                if dtype not in self.valid_dtypes:
                    raise ValueError(f'optim_wrapper.dtype must be one of {self.valid_dtypes}, '
                                     f'got {dtype!r}')
                dtype = getattr(torch, dtype)
            OptimWrapper.__init__(self, optimizer, clip_grad=clip_grad, **kwargs)
            self.autocast_device = 'cpu'
            self.loss_scaler, self._scale_update_param = build_grad_scaler(loss_scale, 'cpu')
            self.cast_dtype = torch.float16 if dtype is None else dtype
        if self.cast_dtype == torch.bfloat16:
            # bf16 has float32's exponent range: scaling changes no value and the scaler's
            # overflow check would read a flag on the host at every step
            self.loss_scaler = torch.amp.GradScaler(self.autocast_device or 'cuda',
                                                     enabled=False)
            self._scale_update_param = None
        optimizer.register_load_state_dict_pre_hook(keep_implementation)

    @contextmanager
    def optim_context(self, model: nn.Module):
        if self.autocast_device is None:
            with AmpOptimWrapper.optim_context(self, model):
                yield
        else:
            with OptimWrapper.optim_context(self, model), torch.autocast(
                    device_type=self.autocast_device, dtype=self.cast_dtype):
                yield

    def step(self, **kwargs) -> None:
        logged = {}
        if self._needs_edit():
            self.loss_scaler.unscale_(self.optimizer)
            logged = self._edit_grads()
        self.loss_scaler.step(self.optimizer, **kwargs)
        if self.loss_scaler.is_enabled():
            self.overflowed = overflow_flag(self.loss_scaler, self.optimizer)
        self.loss_scaler.update(self._scale_update_param)
        self._log_norms(logged)
        if (self.autocast_device in numerics.HOST_CHECK_DEVICES  # looked up now (tests)
                and self.loss_scaler.is_enabled()):
            # a skipped (overflow) step shows as a halved scale; reading it on a GPU would
            # wait for the optimiser step, so it is logged where that is free
            self.message_hub.update_scalar('train/loss_scale', self.loss_scaler.get_scale())
