"""FSDP2 (``torch.distributed.fsdp.fully_shard``) as a strategy of mmengine's FlexibleRunner.

mmengine 0.10's ``FSDPStrategy`` wraps the older ``FullyShardedDataParallel``, which refuses
to run without an accelerator; ``fully_shard`` works on any device (gloo on a CPU too). This
strategy is mmengine's ``DDPStrategy`` (process group, randomness, optimiser wrapper,
schedulers, checkpoint layout) with two differences:

* ``_wrap_model`` shards the model in place instead of wrapping it in DDP. For a
  self-distillation model, student and teacher are sharded identically (every transformer
  block, then each of backbone / neck / head, then the root), so each rank holds matching
  shards of a student parameter and of its EMA copy and the teacher update is a local
  per-shard operation (``TeacherEMA.update_parameters``) with no communication.
* checkpoints hold full (unsharded) state dicts on CPU, written by rank 0 — the same keys and
  optimiser layout as a DDP checkpoint, so the export tools read them unchanged and a resume
  under FSDP is tested (a resume under plain DDP has not been tried).
"""
import re
import time
from typing import Callable, Dict, List, Optional

import mmengine
import torch
from mmengine._strategy import DDPStrategy
from mmengine.device import get_device
from mmengine.dist import is_distributed, is_main_process
from mmengine.model import BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import STRATEGIES
from mmengine.runner.checkpoint import save_checkpoint
from mmengine.utils import get_git_hash
from torch import nn

try:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # FSDP2's public API is torch >= 2.6; the rest of the package works without
    MixedPrecisionPolicy = fully_shard = None

DTYPES = dict(float32=torch.float32, bfloat16=torch.bfloat16, float16=torch.float16)
STUDENT_PARTS = ('backbone', 'neck', 'head')


def mixed_precision_policy(cfg: Optional[dict]) -> MixedPrecisionPolicy:
    """``MixedPrecisionPolicy`` from ``dict(param_dtype='bfloat16', reduce_dtype='float32')``
    (dtype names as strings, as a config holds them); None keeps the parameters' dtype."""
    if cfg is None:
        return MixedPrecisionPolicy()
    unknown = set(cfg) - {'param_dtype', 'reduce_dtype', 'output_dtype', 'cast_forward_inputs'}
    if unknown:
        raise ValueError(f'strategy.mixed_precision has unknown keys {sorted(unknown)}')
    kwargs = dict(cfg)
    for key in ('param_dtype', 'reduce_dtype', 'output_dtype'):
        if isinstance(kwargs.get(key), str):
            if kwargs[key] not in DTYPES:
                raise ValueError(f'strategy.mixed_precision.{key} must be one of '
                                 f'{sorted(DTYPES)}, got {kwargs[key]!r}')
            kwargs[key] = DTYPES[kwargs[key]]
    return MixedPrecisionPolicy(**kwargs)


def shard_units(module: nn.Module) -> List[nn.Module]:
    """The modules ``fully_shard`` is applied to inside ``module``, innermost first: every
    block of a ``layers`` ModuleList (mmpretrain's ViT blocks), then ``module`` itself."""
    units = []
    layers = getattr(module, 'layers', None)
    if isinstance(layers, nn.ModuleList):
        units.extend(layers)
    return units + [module]


def self_distillation_units(model: nn.Module) -> List[nn.Module]:
    """Student and teacher parts in the same order, so both are sharded the same way."""
    teacher = model.teacher.module
    units = []
    for tree in (model._student_modules(), teacher):
        for part in STUDENT_PARTS:
            if part in tree:
                units.extend(shard_units(tree[part]))
    return units


def _no_teacher_prefetch(backbone: nn.Module) -> None:
    """In the backward FSDP2 prefetches, for each unit, the unit whose forward ended just
    before its own. For the student's first block that is the teacher's last unit, which has
    no backward: one wasted all-gather per step. Its backward is followed by the rest of the
    student backbone (the patch embedding), gathered already, so prefetch that instead."""
    blocks = getattr(backbone, 'layers', None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) and hasattr(
            blocks[0], 'set_modules_to_backward_prefetch'):
        blocks[0].set_modules_to_backward_prefetch([backbone])


def shard_model(model: nn.Module, reshard_after_forward: bool = True,
                student_reshard_after_forward: Optional[bool] = None,
                **fsdp_kwargs) -> nn.Module:
    """Apply ``fully_shard`` to the units of ``model`` and then to the root (in place).

    ``student_reshard_after_forward`` (default: ``reshard_after_forward``) is used for the
    student's units of a self-distillation model. Kept gathered after its forward (False,
    DINOv2's ``SHARD_GRAD_OP`` for the student), a student unit is all-gathered once per
    step, not once more for its backward (a backbone that takes all crop sizes in one call,
    ``MaskedViT``, calls each block once; with one call per size the backward of the
    second call gathers the block again). The teacher has no backward, so it reshards after
    its forward: otherwise its parameters would stay gathered and the per-shard EMA could
    not run.
    """
    if hasattr(model, 'teacher') and hasattr(model, '_student_modules'):
        units = self_distillation_units(model)
        teacher_params = {id(p) for p in model.teacher.module.parameters()}
        student_choice = (reshard_after_forward if student_reshard_after_forward is None
                          else student_reshard_after_forward)
        choices = [reshard_after_forward if any(id(p) in teacher_params
                                                for p in unit.parameters())
                   else student_choice for unit in units]
    else:
        units = [block for m in model.modules() if isinstance(getattr(m, 'layers', None),
                                                              nn.ModuleList)
                 for block in m.layers]
        choices = [reshard_after_forward] * len(units)
    for unit, reshard in zip(units, choices):
        fully_shard(unit, reshard_after_forward=reshard, **fsdp_kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **fsdp_kwargs)
    if hasattr(model, '_student_modules'):
        _no_teacher_prefetch(model._student_modules()['backbone'])
    # FSDP2 makes the first module whose forward runs the root; a k-NN probe calling the
    # teacher backbone before the first training step would take that role and break the
    # training forward, so the root is fixed now (torch has no public call for this)
    fully_shard.state(model)._lazy_init()
    return model


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """Names of the optimiser's parameters in ``param_groups`` order (the order of the
    integer ids of ``optimizer.state_dict()``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group['params']]


def optimizer_ids_from_names(state: dict, names: List[str]) -> dict:
    """A name-keyed optimiser state dict (torch.distributed.checkpoint) -> torch's layout
    with integer parameter ids, as ``Optimizer.state_dict()`` writes it."""
    index = {n: i for i, n in enumerate(names)}
    return dict(state={index[n]: v for n, v in state['state'].items()},
                param_groups=[dict(g, params=[index[n] for n in g['params']])
                              for g in state['param_groups']])


def optimizer_names_from_ids(state: dict, names: List[str]) -> dict:
    """The inverse of :func:`optimizer_ids_from_names`."""
    if sum(len(g['params']) for g in state['param_groups']) != len(names):
        raise ValueError('the checkpoint\'s optimizer state has '
                         f'{sum(len(g["params"]) for g in state["param_groups"])} parameters, '
                         f'the model\'s optimizer {len(names)}')
    return dict(state={names[i]: v for i, v in state['state'].items()},
                param_groups=[dict(g, params=[names[i] for i in g['params']])
                              for g in state['param_groups']])


@STRATEGIES.register_module()
class FSDP2Strategy(DDPStrategy):
    """mmengine strategy sharding the model with FSDP2 (``fully_shard``).

    Args:
        mixed_precision: ``MixedPrecisionPolicy`` arguments, e.g.
            ``dict(param_dtype='bfloat16', reduce_dtype='float32')`` (forward/backward in
            bf16, gradients reduced and parameters, optimiser states and the EMA teacher kept
            in fp32); None computes in the parameters' dtype.
        reshard_after_forward: free the gathered parameters of a block after its forward
            (True: less memory, a second all-gather in the backward); the teacher's and,
            unless ``student_reshard_after_forward`` says otherwise, the student's.
        student_reshard_after_forward: the same for the student's blocks; default False
            (DINOv2's ``SHARD_GRAD_OP``): the student's backbone runs once per crop size,
            and a block kept gathered is all-gathered once per step rather than twice in
            the forward and twice in the backward.
        **kwargs: as mmengine's ``DDPStrategy`` (``model_wrapper`` is not used).
    """

    def __init__(self, *, mixed_precision: Optional[dict] = None,
                 reshard_after_forward: bool = True,
                 student_reshard_after_forward: Optional[bool] = False, **kwargs):
        if fully_shard is None:
            raise ImportError('FSDP2Strategy needs torch >= 2.6 (torch.distributed.fsdp.'
                              f'fully_shard); this is torch {torch.__version__}')
        super().__init__(**kwargs)
        self.mp_policy = mixed_precision_policy(mixed_precision)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.student_reshard_after_forward = student_reshard_after_forward

    def _setup_distributed(self, launcher: str = 'pytorch', backend: str = 'nccl',
                           **kwargs) -> None:
        if is_distributed():
            return
        if launcher == 'pytorch' and not torch.cuda.is_available():
            # mmengine's init_dist selects a CUDA device; a CPU run needs the process group only
            if backend != 'gloo':
                raise ValueError(f"env_cfg.dist_cfg.backend={backend!r} needs a GPU; use "
                                 "'gloo' on a CPU")
            torch.distributed.init_process_group(backend='gloo', **kwargs)
            return
        super()._setup_distributed(launcher, backend, **kwargs)

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, BaseModel):
            raise TypeError(f'FSDP2Strategy needs an mmengine BaseModel, got {type(model)}')
        model = self.convert_model(model.to(get_device()))
        return shard_model(model, mp_policy=self.mp_policy,
                           reshard_after_forward=self.reshard_after_forward,
                           student_reshard_after_forward=self.student_reshard_after_forward)

    # ----------------------------------------------------------------- checkpoints
    def _full_options(self, strict: bool = True) -> StateDictOptions:
        return StateDictOptions(full_state_dict=True, cpu_offload=True, strict=strict)

    def _single_optimizer(self) -> torch.optim.Optimizer:
        if not isinstance(self.optim_wrapper, OptimWrapper):
            raise TypeError('FSDP2Strategy supports one OptimWrapper (not '
                            f'{type(self.optim_wrapper).__name__})')
        return self.optim_wrapper.optimizer

    def model_state_dict(self) -> dict:
        """Full model state dict on CPU (a collective: every rank calls it; rank 0 gets it)."""
        return get_model_state_dict(self.model, options=self._full_options())

    def optim_state_dict(self) -> dict:
        """Full optimiser state dict in torch's integer-id layout (+ the loss scaler)."""
        optimizer = self._single_optimizer()
        full = get_optimizer_state_dict(self.model, optimizer, options=self._full_options())
        if not is_main_process():
            return {}
        state = optimizer_ids_from_names(full, _optimizer_param_names(self.model, optimizer))
        if isinstance(self.optim_wrapper, AmpOptimWrapper):
            state['loss_scaler'] = self.optim_wrapper.loss_scaler.state_dict()
        # the base lr/wd that mmengine's OptimWrapper tracks beside the groups (the param
        # schedulers step it too): OptimWrapper.state_dict saves it, so must we
        base = getattr(self.optim_wrapper, 'base_param_settings', None)
        if base is not None:
            state['base_param_settings'] = base
        return state

    def save_checkpoint(self, filename: str, *, save_optimizer: bool = True,
                        save_param_scheduler: bool = True, extra_ckpt: Optional[dict] = None,
                        callback: Optional[Callable] = None) -> None:
        """mmengine's checkpoint layout (SingleDeviceStrategy.save_checkpoint), assembled on
        every rank: the full state dicts are collectives, and so may be the
        ``before_save_checkpoint`` hooks the callback runs (RandomStateHook gathers every
        rank's RNG state), which DDPStrategy would run on rank 0 only. Rank 0 writes the
        file atomically (a killed writer leaves the previous file)."""
        checkpoint = dict(state_dict=self.model_state_dict())
        if save_optimizer and hasattr(self, 'optim_wrapper'):
            checkpoint['optimizer'] = self.optim_state_dict()
        if save_param_scheduler and hasattr(self, 'param_schedulers'):
            checkpoint['param_schedulers'] = self.scheduler_state_dict()
        extra_ckpt = dict(extra_ckpt or {})
        extra_ckpt['meta'] = dict(extra_ckpt.get('meta') or {}, seed=self.seed,
                                  time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
                                  mmengine=mmengine.__version__ + get_git_hash())
        checkpoint.update(extra_ckpt)
        if callback is not None:
            callback(checkpoint)
        if is_main_process():
            local = '://' not in str(filename)
            save_checkpoint(checkpoint, filename,
                            backend_args=dict(backend='atomic_local') if local else None)

    def load_model_state_dict(self, state_dict: dict, *, strict: bool = False,
                              revise_keys: list = [(r'^module.', '')]) -> None:
        for pattern, replacement in revise_keys:
            state_dict = {re.sub(pattern, replacement, k): v for k, v in state_dict.items()}
        set_model_state_dict(self.model, state_dict, options=self._full_options(strict))

    def load_optim_state_dict(self, state_dict: dict) -> None:
        optimizer = self._single_optimizer()
        state_dict = dict(state_dict)
        scaler: Optional[Dict] = state_dict.pop('loss_scaler', None)
        base = state_dict.pop('base_param_settings', None)
        if base is not None:
            self.optim_wrapper.base_param_settings = base
        if scaler is not None and isinstance(self.optim_wrapper, AmpOptimWrapper):
            self.optim_wrapper.loss_scaler.load_state_dict(scaler)
        named = optimizer_names_from_ids(state_dict,
                                         _optimizer_param_names(self.model, optimizer))
        set_optimizer_state_dict(self.model, optimizer, named, options=self._full_options())
