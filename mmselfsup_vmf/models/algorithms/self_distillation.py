"""The shared self-distillation machinery: student, EMA teacher, multi-crop forward.

DINO, DINO-vMF, iBOT, iBOT-vMF, SimDINO and SimDINOv2 subclass ``SelfDistillation`` and only
say how head outputs become a loss.
"""
import math
from abc import abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.models.utils import CosineEMA
from mmpretrain.registry import MODELS
from torch import nn

from ...arg_checks import check_argument_names, check_int, check_positive
from ..backbones.official_init import OFFICIAL_INITS, official_vit_init
from ..utils.compile import CompileAnnouncer, compile_kwargs, compile_parts
from ..utils.dist import local_shard
from ..utils.schedules import teacher_temperature


def split_tokens(out: torch.Tensor,
                 num_extra_tokens: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(CLS, patch tokens) of a backbone output: (B, C) -> (x, None); (B, L, C) -> split."""
    if out.dim() == 2:
        return out, None
    if out.dim() == 3:
        return out[:, 0], out[:, num_extra_tokens:]
    raise ValueError(
        f'backbone output of shape {tuple(out.shape)} is neither (B, C) nor (B, L, C); for a '
        "CNN add a pooling neck (e.g. neck=dict(type='GlobalAveragePooling')), for a ViT use "
        "out_type='cls_token' or 'raw'")


def group_by_size(views: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """[start, end) runs of consecutive views with the same shape (one backbone call each)."""
    runs, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[1:] != views[start].shape[1:]:
            runs.append((start, i))
            start = i
    return runs


def weight_losses(terms: Dict[str, torch.Tensor], weight: float) -> Dict[str, torch.Tensor]:
    """``terms`` with every loss term (a key containing 'loss') multiplied by ``weight``."""
    return {k: v * weight if 'loss' in k else v for k, v in terms.items()}


class TeacherEMA(CosineEMA):
    """mmpretrain's CosineEMA with the run length given by the model, not read from the
    MessageHub; until it is given (``max_iters`` None: unit tests, benchmarks) the update
    weight stays at its start value.

    ``update_parameters`` copies the student on its first call (``steps == 0``) and averages
    on call ``k >= 1``, which is DINO's update at the end of iteration ``k - 1``
    (``momentum_schedule[k - 1]``, 0.996 first), so the cosine is evaluated at ``k - 1``.
    """

    max_iters: Optional[int] = None

    def __init__(self, model: nn.Module, momentum: float, end_momentum: float = 0.0,
                 **kwargs) -> None:
        # mmengine's BaseAveragedModel asserts 0 < momentum < 1, but both ends mean something
        # here: weight 1 (DINO momentum 0) copies the student at every step, i.e. no
        # self-distillation (SimDINO's robustness experiment); weight 0 freezes the teacher.
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f'TeacherEMA: update weight must be in [0, 1], got {momentum}')
        super().__init__(model, momentum=0.5, end_momentum=end_momentum, **kwargs)
        self.momentum = float(momentum)
        self._host_steps: Optional[int] = 0  # host copy of the ``steps`` buffer (built as 0)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._host_steps = None  # a loaded ``steps`` is read once, at the next update

    def host_steps(self) -> int:
        """The ``steps`` buffer as a Python int, read from the device once per load: it
        changes only in ``update_parameters``, which keeps the host copy in step."""
        if self._host_steps is None:
            self._host_steps = int(self.steps)
        return self._host_steps

    def update_weight(self, steps: int) -> float:
        """The weight 1 - m of the student in the update of call ``steps``."""
        if self.max_iters is None:
            return self.momentum
        # CosineEMA.avg_func's cosine, at steps - 1
        cosine_annealing = (math.cos(math.pi * (steps - 1) / float(self.max_iters)) + 1) / 2
        return self.end_momentum - (self.end_momentum - self.momentum) * cosine_annealing

    def avg_func(self, averaged_param: torch.Tensor, source_param: torch.Tensor,
                 steps: int) -> None:
        weight = self.update_weight(steps)
        if self.max_iters is None:
            averaged_param.lerp_(source_param, weight)
        else:
            averaged_param.mul_(1 - weight).add_(source_param, alpha=weight)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """BaseAveragedModel.update_parameters as one foreach update over the local tensors.

        The parameters are looked up on every call (FSDP replaces them when it shards the
        model) and, when FSDP2 has sharded student and teacher identically, each rank updates
        its own shards (``DTensor.to_local``): the EMA is elementwise, so no communication.
        The arithmetic is ``avg_func``'s, tensor by tensor.
        """
        source = dict(model.named_parameters())
        averaged, sources = [], []
        for name, avg in self.module.named_parameters():
            if not avg.dtype.is_floating_point:
                continue
            avg_local, src_local = local_shard(avg), local_shard(source[name])
            if type(avg) is not type(source[name]) or avg_local.shape != src_local.shape:
                raise RuntimeError(
                    f'teacher parameter {name!r} ({type(avg).__name__} '
                    f'{tuple(avg_local.shape)}) and its student parameter '
                    f'({type(source[name]).__name__} {tuple(src_local.shape)}) are not '
                    'sharded alike; shard student and teacher with the same units')
            averaged.append(avg_local)
            sources.append(src_local)
        steps = self.host_steps()
        if steps == 0:
            torch._foreach_copy_(averaged, sources)
        elif steps % self.interval == 0 and averaged:
            weight = self.update_weight(steps)
            if self.max_iters is None:
                torch._foreach_lerp_(averaged, sources, weight)
            else:
                torch._foreach_mul_(averaged, 1 - weight)
                torch._foreach_add_(averaged, sources, alpha=weight)
        for b_avg, b_src in zip(self.module.buffers(), model.buffers()):
            b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1
        self._host_steps = steps + 1


def temperature_schedule(key: str, given: Optional[dict], defaults: dict) -> dict:
    """A temperature schedule ``dict(start, end, warmup_epochs, ...)`` (config key ``key``)
    completed with ``defaults`` and checked: temperatures > 0, epochs integers >= 0."""
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f'{key} takes {sorted(defaults)}, got unknown keys {sorted(unknown)}')
    schedule = dict(defaults, **(given or {}))
    for name in ('start', 'end'):
        check_positive(f'{key}.{name}', schedule[name])
    for name in set(schedule) - {'start', 'end'}:
        check_int(f'{key}.{name}', schedule[name], minimum=0)
    return schedule


class SelfDistillation(BaseSelfSupervisor):
    """Student (backbone [+ neck] + head) and an EMA teacher of the same modules.

    Args:
        backbone, neck, head: configs as in mmpretrain; the head is this project's DINOHead.
        loss: config of the loss module (``self.loss_module``).
        num_global_views: the first views of each sample are the global crops; only they go
            through the teacher.
        teacher_momentum / teacher_momentum_end: DINO's convention (0.996 -> 1, cosine per
            iteration). mmpretrain's ``CosineEMA`` takes the update weight 1 - m; the
            conversion happens here.
        teacher_temp: DINO's teacher temperature schedule ``dict(start, end, warmup_epochs)``.
        backbone_init: None keeps mmpretrain's ViT initialisation; 'dino' (DINO, iBOT,
            SimDINO) or 'dinov2' (SimDINOv2) re-initialise the backbone as the official code
            (:func:`~mmselfsup_vmf.models.backbones.official_init.official_vit_init`); the
            published recipes set it.
        compile: ``torch.compile`` the backbone, neck and head of student and teacher in
            place: True, or a dict of ``torch.compile`` arguments (``tools/train.py
            --compile``); checkpoints keep the eager keys (``models/utils/compile.py``).

    The teacher is updated at the start of each training step from the student as left by the
    previous optimiser step (mmpretrain's MoCoV3 pattern, which also works under DDP), so the
    teacher used in step t equals DINO's teacher after its update at the end of step t - 1.

    Where training is (epoch, iteration, run length) reaches the model through
    :meth:`set_train_progress`, which ``TrainProgressHook`` calls before every iteration; the
    schedules (teacher temperature, EMA momentum, masks) are evaluated from it and passed to
    the losses as arguments.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 loss: dict,
                 neck: Optional[dict] = None,
                 num_global_views: int = 2,
                 teacher_momentum: float = 0.996,
                 teacher_momentum_end: float = 1.0,
                 teacher_temp: Optional[dict] = None,
                 backbone_init: Optional[str] = None,
                 compile: Union[bool, dict, None] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg=None):
        compile_args = compile_kwargs(compile)
        if backbone_init is not None and backbone_init not in OFFICIAL_INITS:
            raise ValueError(f'model.backbone_init must be None or one of {OFFICIAL_INITS}, '
                             f'got {backbone_init!r}')
        if num_global_views < 1:
            raise ValueError(f'num_global_views must be >= 1 (the teacher sees the global '
                             f'crops), got {num_global_views}')
        if not 0.0 <= teacher_momentum <= teacher_momentum_end <= 1.0:
            raise ValueError('need 0 <= teacher_momentum <= teacher_momentum_end <= 1, got '
                             f'{teacher_momentum} and {teacher_momentum_end}')
        for key, module_cfg in (('model.neck', neck), ('model.head', head), ('model.loss', loss)):
            check_argument_names(key, module_cfg, MODELS)
        super().__init__(backbone=backbone, neck=neck, head=head,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.loss_module = MODELS.build(loss)
        self.backbone_init = backbone_init
        self.num_global_views = num_global_views
        self.teacher_temp_cfg = temperature_schedule(
            'model.teacher_temp', teacher_temp, dict(start=0.04, end=0.04, warmup_epochs=0))
        self.teacher = TeacherEMA(self._student_modules(), momentum=1.0 - teacher_momentum,
                                 end_momentum=1.0 - teacher_momentum_end)
        self.teacher.train(False)
        self.epoch = 0
        self._progress_known = False
        self.check_vmf_dim('loss_module', 'model.loss')
        self.check_modules()
        self.compile_args = compile_args
        self.compile_announcer = None
        if compile_args is not None:
            compile_parts([self._student_modules(), self.teacher.module], compile_args)
            self.compile_announcer = CompileAnnouncer(compile_args)

    def check_modules(self) -> None:
        """Build-time checks of how head and loss fit together (subclasses add theirs)."""

    def check_vmf_dim(self, loss_name: str, config_key: str) -> None:
        """The vMF term's p must be the dimension of the prototypes (the head's bottleneck);
        another value would silently give a wrong log-normaliser."""
        loss = getattr(self, loss_name)
        head_dim = getattr(self.head, 'bottleneck_channels', None)
        if getattr(loss, 'vmf', False) and head_dim is not None and loss.dim != head_dim:
            raise ValueError(f'{config_key}.dim={loss.dim} (p of the vMF normaliser) must equal '
                             f'model.head.bottleneck_channels={head_dim}')

    # ----------------------------------------------------------------- student / teacher
    def _student_modules(self) -> nn.ModuleDict:
        parts = dict(backbone=self.backbone, head=self.head)
        if self.neck is not None:
            parts['neck'] = self.neck
        return nn.ModuleDict(parts)

    def init_weights(self):
        super().init_weights()
        pretrained = getattr(self.backbone, 'init_cfg', None)
        pretrained = isinstance(pretrained, dict) and pretrained.get('type') == 'Pretrained'
        if self.backbone_init is not None and not pretrained:
            official_vit_init(self.backbone, self.backbone_init)
        self.sync_teacher()

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Copy the student into the teacher (after initialisation)."""
        self.teacher.module.load_state_dict(self._student_modules().state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(False)  # the teacher is always in eval mode (no drop-path)
        return self

    # ----------------------------------------------------------------- schedules
    def set_train_progress(self, epoch: int, iteration: int, max_iters: int) -> None:
        """Where training is; called by ``TrainProgressHook`` before every iteration."""
        self.epoch = int(epoch)
        self.teacher.max_iters = int(max_iters)
        if hasattr(self.data_preprocessor, 'set_train_progress'):
            self.data_preprocessor.set_train_progress(epoch, iteration)
        self._progress_known = True

    def schedule_values(self) -> Dict[str, float]:
        """The scheduled loss arguments at the current epoch (DINO's per-epoch schedules)."""
        cfg = self.teacher_temp_cfg
        return dict(teacher_temp=teacher_temperature(self.epoch, cfg['warmup_epochs'],
                                                     cfg['start'], cfg['end']))

    def teacher_temperature(self) -> float:
        return self.schedule_values()['teacher_temp']

    def _warn_if_progress_unknown(self) -> None:
        if not self._progress_known:
            print_log(f'{type(self).__name__} is training without TrainProgressHook: the '
                      'teacher temperature and momentum schedules stay at their start values; '
                      "add default_hooks=dict(train_progress=dict(type='TrainProgressHook'))",
                      logger='current', level=30)
            self._progress_known = True  # say it once

    def embed(self, modules: nn.ModuleDict, x: torch.Tensor,
              mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Backbone (+ neck) features of one batch of same-size crops -> (CLS, patches)."""
        backbone = modules['backbone']
        return self._tokens(modules, backbone(x) if mask is None else backbone(x, mask=mask))

    def _tokens(self, modules: nn.ModuleDict, out) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if 'neck' in modules:
            out = modules['neck'](out)
        out = out[-1] if isinstance(out, (tuple, list)) else out
        return split_tokens(out, getattr(modules['backbone'], 'num_extra_tokens', 1))

    def embed_groups(self, modules: nn.ModuleDict, batches: List[torch.Tensor],
                     masks: List[Optional[torch.Tensor]]) -> List[Tuple]:
        """(CLS, patches) of each batch; a backbone that takes lists (``MaskedViT``) runs all
        batches in one call, each block on every batch in turn (one FSDP2 gather per block)."""
        backbone = modules['backbone']
        if len(batches) > 1 and getattr(backbone, 'takes_crop_lists', False):
            outs = backbone(batches, mask=masks if any(m is not None for m in masks) else None)
            return [self._tokens(modules, out) for out in outs]
        return [self.embed(modules, x, m) for x, m in zip(batches, masks)]

    def embed_views(self, modules: nn.ModuleDict, views: Sequence[torch.Tensor],
                    masks: Optional[Sequence[torch.Tensor]] = None):
        """Run consecutive same-size views as one batch; returns per-view (CLS, patches)."""
        runs = group_by_size(views)
        batches, batch_masks = [], []
        for start, end in runs:
            batches.append(torch.cat(list(views[start:end])))
            m = None
            if masks is not None and start < len(masks):
                if end > len(masks):
                    raise ValueError('masks must cover whole groups of same-size views')
                m = torch.cat(list(masks[start:end]))
            batch_masks.append(m)
        cls_out, patch_out = [], []
        for (start, end), (cls, patches) in zip(runs, self.embed_groups(modules, batches,
                                                                        batch_masks)):
            cls_out.extend(cls.chunk(end - start))
            patch_out.extend([None] * (end - start) if patches is None else
                             patches.chunk(end - start))
        return cls_out, patch_out

    def check_views(self, inputs) -> List[torch.Tensor]:
        if isinstance(inputs, torch.Tensor):
            inputs = [inputs]
        views = list(inputs)
        if len(views) < self.num_global_views:
            raise ValueError(
                f'{type(self).__name__} expects at least num_global_views='
                f'{self.num_global_views} views per sample but the pipeline produced '
                f'{len(views)}; check MultiView(num_views=...) in the data pipeline')
        return views

    def global_masks(self, data_samples) -> Optional[List[torch.Tensor]]:
        """Per global view, the (B, h, w) bool masks that ``MaskedSelfSupDataPreprocessor``
        attached to each data sample as ``mask`` (num_global_views, h, w); None if absent."""
        if not data_samples or not hasattr(data_samples[0], 'mask'):
            return None
        masks = torch.stack([ds.mask for ds in data_samples])  # (B, G, h, w)
        if masks.dim() != 4 or masks.shape[1] != self.num_global_views:
            raise ValueError(f'data_samples[i].mask must have shape (num_global_views='
                             f'{self.num_global_views}, h, w), got {tuple(masks.shape[1:])}')
        return [masks[:, g].bool() for g in range(self.num_global_views)]

    # ----------------------------------------------------------------- public API
    def update_teacher(self) -> None:
        with torch.no_grad():
            self.teacher.update_parameters(self._student_modules())

    @torch.no_grad()
    def knn_features(self, data_batch: dict, key: str = 'teacher') -> torch.Tensor:
        """CLS features (B, C) of the teacher (or student) backbone for k-NN evaluation."""
        if key not in ('teacher', 'student'):
            raise ValueError(f"key must be 'teacher' or 'student', got {key!r}")
        data = self.data_preprocessor(data_batch, False)
        inputs = data['inputs']
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        modules = self.teacher.module if key == 'teacher' else self._student_modules()
        cls, _ = self.embed(modules, x)
        return cls.float()

    def loss(self, inputs: List[torch.Tensor], data_samples: List) -> Dict[str, torch.Tensor]:
        views = self.check_views(inputs)
        if self.training:
            self._warn_if_progress_unknown()
            self.update_teacher()
            if self.compile_announcer is not None:
                self.compile_announcer.training_forward()
        return self.distillation_loss(views, data_samples)

    @abstractmethod
    def distillation_loss(self, views: List[torch.Tensor],
                          data_samples: List) -> Dict[str, torch.Tensor]:
        """Head outputs of student and teacher -> a dict of loss terms (keys with 'loss')
        and detached statistics, as mmengine's ``parse_losses`` expects."""
