"""SimDINO and SimDINOv2 (Wu et al., "Simplifying DINO via Coding Rate Regularization").

Both drop DINO's prototypes, softmax, temperatures and centering: the head returns
L2-normalised features and the loss is a cosine alignment minus a coding-rate term
(:class:`~mmselfsup_vmf.models.losses.SimDINOLoss`). SimDINOv2 adds DINOv2's masked
student global crops with a negative-cosine loss on the masked patch tokens.
"""
from typing import Dict, List, Optional, Union

import torch
from mmpretrain.registry import MODELS

from ..losses import masked_patch_cosine_loss_gathered
from ..losses.numerics import host_checks_are_free
from ..losses.simdino_loss import check_rate_batch
from ..utils.static_masks import max_masked_patches, padded_mask_index
from .self_distillation import SelfDistillation


@MODELS.register_module()
class SimDINO(SelfDistillation):
    """SimDINO: student CLS of every view vs. the teacher CLS of the global views.

    Student: all V views -> backbone CLS -> DINOHead (``num_prototypes=None``: the unit-norm
    bottleneck); teacher: the ``num_global_views`` global views, same modules (EMA).
    The loss module (``SimDINOLoss``) receives the student outputs ordered
    [global0, global1, local0, ...] and the teacher outputs [global0, global1], and returns
    ``loss_comp`` (−coeff · mean cosine), ``loss_expa`` (−γ · coding rate) and the
    logging values ``comp`` / ``expa`` (the official ``comp_loss`` / ``expa_loss``).

    Args: as :class:`SelfDistillation`; SimDINO has no temperatures, so ``teacher_temp`` is
    unused.
    """

    def check_modules(self) -> None:
        if getattr(self.head, 'last_layer', None) is not None:
            raise ValueError(
                f'{type(self).__name__} uses the normalised head features directly: build '
                'the head with num_prototypes=None (no prototype layer)')
        loss_views = getattr(self.loss_module, 'num_global', self.num_global_views)
        if loss_views != self.num_global_views:
            raise ValueError(f'loss.num_global={loss_views} differs from the model\'s '
                             f'num_global_views={self.num_global_views}')

    def cls_outputs(self, views: List[torch.Tensor]):
        """Head outputs of the student (all views) and teacher (global views), per view."""
        g = self.num_global_views
        with torch.no_grad():
            t_cls, _ = self.embed_views(self.teacher.module, views[:g])
            teacher = self.teacher.module['head'](torch.cat(t_cls)).chunk(g)
        s_cls, _ = self.embed_views(self._student_modules(), views)
        student = self.head(torch.cat(s_cls)).chunk(len(views))
        return list(student), list(teacher)

    def distillation_loss(self, views: List[torch.Tensor],
                          data_samples: List) -> Dict[str, torch.Tensor]:
        check_rate_batch(views[0].shape[0], type(self).__name__)  # before the forward
        student, teacher = self.cls_outputs(views)
        return dict(self.loss_module(student, teacher))


@MODELS.register_module()
class SimDINOv2(SimDINO):
    """SimDINOv2: SimDINO's CLS loss on masked student global crops + a masked-patch term.

    Half of the global crops are block-masked by ``MaskedSelfSupDataPreprocessor``
    (``mask_mode='stratified'``, ratios 0.1-0.5); the student sees them with the masked
    patch embeddings replaced by the backbone's ``mask_token`` (a ``MaskedViT`` with
    ``out_type='raw'``), the teacher sees the unmasked crops. One shared head embeds the
    CLS tokens and the masked patch tokens (official ``separate_head: false``).

        L = −coeff·comp − γ·mean_g R_g + patch_loss_weight · L_patch,
        L_patch = −(1/B_g) Σ_i (1/|M_i|) Σ_{p∈M_i} cos(z^s_{i,p}, z^t_{i,p}),

    with B_g = num_global_views · m counting every global crop, masked or not (official
    ``CosinePatchLoss.forward_masked``). No KoLeo, no centering.

    Args:
        patch_loss_weight: weight of ``loss_patch`` (official ``ibot.loss_weight`` 1.0).
        masked_rows: how many rows the masked patch tokens are gathered into (a fixed
            number keeps the heads' shapes static): 'law' (default) the bound of the data
            preprocessor's mask law (``max_masked_patches``), 'all' every global-crop patch
            (for masks from another source), or an int. More masked patches than rows is an
            error on the CPU and a NaN ``loss_patch`` on an accelerator.
        teacher_momentum: SimDINOv2 starts the EMA at 0.9 (DINOv2: 0.992).
        Others as :class:`SimDINO`.
    """

    def __init__(self, backbone: dict, head: dict, loss: dict, neck: Optional[dict] = None,
                 num_global_views: int = 2, teacher_momentum: float = 0.9,
                 teacher_momentum_end: float = 1.0, patch_loss_weight: float = 1.0,
                 masked_rows: Union[str, int] = 'law',
                 backbone_init: Optional[str] = None,
                 compile: Union[bool, dict, None] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg=None):
        super().__init__(backbone=backbone, head=head, loss=loss, neck=neck,
                         num_global_views=num_global_views, teacher_momentum=teacher_momentum,
                         teacher_momentum_end=teacher_momentum_end, backbone_init=backbone_init,
                         compile=compile, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        if not patch_loss_weight >= 0:
            raise ValueError(f'patch_loss_weight must be >= 0, got {patch_loss_weight!r}')
        self.patch_loss_weight = float(patch_loss_weight)
        if masked_rows not in ('law', 'all') and not (
                isinstance(masked_rows, int) and masked_rows > 0):
            raise ValueError("model.masked_rows must be 'law', 'all' or a positive int, got "
                             f'{masked_rows!r}')
        self.masked_rows = masked_rows

    def flat_global_masks(self, data_samples, views) -> torch.Tensor:
        """The masks of the global crops as (G·m, N) bool, view-major like the crops."""
        masks: Optional[List[torch.Tensor]] = self.global_masks(data_samples)
        if masks is None:
            raise ValueError(
                'SimDINOv2 needs the masks of the global crops: use data_preprocessor='
                "dict(type='MaskedSelfSupDataPreprocessor', mask_mode='stratified', ...)")
        if masks[0].shape[0] != views[0].shape[0]:
            raise ValueError(f'{masks[0].shape[0]} masks for a batch of {views[0].shape[0]}')
        return torch.cat([m.flatten(1) for m in masks])

    def masked_token_rows(self, num_crops: int, num_patches: int) -> int:
        """How many rows the masked patch tokens of a batch are gathered into (``masked_rows``;
        'law' without a masking data preprocessor means every patch)."""
        pre = self.data_preprocessor
        if isinstance(self.masked_rows, int):
            return self.masked_rows
        if self.masked_rows == 'law' and hasattr(pre, 'mask_mode') and hasattr(pre, 'mask_cfg'):
            return max_masked_patches(num_crops, num_patches, pre.mask_mode, pre.mask_cfg)
        return num_crops * num_patches

    def patch_tokens(self, patches: List[Optional[torch.Tensor]], index: torch.Tensor,
                     num_tokens: int) -> torch.Tensor:
        """Rows ``index`` of the global-crop patch tokens (G·m·N, C), checked against the masks."""
        if any(p is None for p in patches):
            raise ValueError('SimDINOv2 needs patch tokens: build the backbone with '
                             "out_type='raw' (e.g. MaskedViT)")
        tokens = torch.cat(patches)
        if tokens.shape[1] != num_tokens:
            raise ValueError(f'the backbone returned {tokens.shape[1]} patch tokens per global '
                             f'crop but the masks have {num_tokens} patches; check '
                             'data_preprocessor.patch_size against the backbone')
        return tokens.flatten(0, 1).index_select(0, index)

    def distillation_loss(self, views: List[torch.Tensor],
                          data_samples: List) -> Dict[str, torch.Tensor]:
        check_rate_batch(views[0].shape[0], type(self).__name__)  # before the forward
        g, num_views, m = self.num_global_views, len(views), views[0].shape[0]
        masks = self.flat_global_masks(data_samples, views)  # (G·m, N)
        # The masked tokens, padded to a fixed count with weight-0 rows: the heads see one
        # shape every step (no recompilation) and nothing waits for the mask count.
        rows = self.masked_token_rows(*masks.shape)
        weight_dtype = torch.float64 if views[0].dtype == torch.float64 else torch.float32
        index, weights, count = padded_mask_index(masks, rows, weight_dtype)

        # Heads run once on [CLS of every crop; masked patch tokens], as the official code.
        with torch.no_grad():
            t_cls, t_patches = self.embed_views(self.teacher.module, views[:g])
            t_tokens = self.patch_tokens(t_patches, index, masks.shape[1])  # (rows, C)
            t_out = self.teacher.module['head'](torch.cat(t_cls + [t_tokens]))
            teacher_cls, teacher_patch = list(t_out[:g * m].chunk(g)), t_out[g * m:]

        s_cls, s_patches = self.embed_views(self._student_modules(), views,
                                            list(masks.chunk(g)))
        s_tokens = self.patch_tokens(s_patches[:g], index, masks.shape[1])
        s_out = self.head(torch.cat(s_cls + [s_tokens]))
        student_cls = list(s_out[:num_views * m].chunk(num_views))
        student_patch = s_out[num_views * m:]

        losses = dict(self.loss_module(student_cls, teacher_cls))
        loss_patch = masked_patch_cosine_loss_gathered(
            student_patch, teacher_patch, weights,
            num_images=masks.shape[0])  # every global crop counts, masked or not
        if host_checks_are_free(count) and int(count) > rows:
            raise RuntimeError(f'{int(count)} masked patches exceed model.masked_rows='
                               f'{self.masked_rows!r} ({rows} rows); for masks that do not come '
                               "from the data preprocessor's law set model.masked_rows='all'")
        # on an accelerator an exceeded bound shows as a NaN loss instead of a host read
        loss_patch = torch.where(count > rows, torch.full_like(loss_patch, float('nan')),
                                 loss_patch)
        losses['loss_patch'] = self.patch_loss_weight * loss_patch
        losses['mask_ratio'] = masks.float().mean().detach()
        return losses
